"""API keys reach the server but never an output, a log line, an error message or the cache."""

import logging

import pytest
from fake_llm_server import FakeLLMServer, Fault
from test_teacher_filtering import identity_cells

from cellduality.errors import CellDualityError
from cellduality.tasks.settings import TaskTableSettings
from cellduality.tasks.tables import build_task_tables
from cellduality.teacher.filtering import FilterSettings
from cellduality.teacher.runner import TeacherSettings, api_key
from cellduality.teacher.sft_data import write_sft_dataset

KEY = "sk-LEAKCHECK-0123456789abcdefSECRET"


def scan(root) -> list[str]:
    """Files under ``root`` containing the key (raw bytes, so SQLite pages and Parquet count too)."""
    return [str(p) for p in root.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]


@pytest.fixture
def debug_log(tmp_path):
    """Everything logged at DEBUG (including the openai / httpx / google-genai loggers) into a file."""
    path = tmp_path / "logs" / "teacher.log"
    path.parent.mkdir()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield path
    root.removeHandler(handler)
    root.setLevel(old_level)
    handler.close()


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_api_key_never_leaks(tmp_path, debug_log, provider):
    table = build_task_tables(identity_cells(), ["annotation"], tables=TaskTableSettings(rl_fraction=0.0))
    env = {"MY_TEACHER_KEY": KEY}
    out = tmp_path / "results"
    with FakeLLMServer() as server:
        server.faults[:] = [Fault("429", retry_after_ms=10), Fault("500"), Fault("malformed")]
        base = server.url + ("/v1" if provider == "openai" else "")
        settings = TeacherSettings(provider=provider, base_url=base, api_key_env="MY_TEACHER_KEY", n_samples=2,
                                   backoff_s=0.01, timeout_s=5, progress=True)
        write_sft_dataset(table, out / "sft.parquet", out / "sft.stats.json", settings, FilterSettings(),
                          cache_path=out / "teacher_cache" / "responses.sqlite", env=env, label="annotation/d")
        server.faults[:] = [Fault("401", times=99)]  # the server echoes the key in its error message
        with pytest.raises(CellDualityError) as err:
            write_sft_dataset(table, out / "sft2.parquet", out / "sft2.stats.json",
                              TeacherSettings(**{**settings.__dict__, "temperature": 0.3}), FilterSettings(),
                              cache_path=out / "teacher_cache" / "responses.sqlite", env=env)
        seen = {r["api_key"] for r in server.requests}
    assert seen == {KEY}  # positive control: the key was really used
    assert "401" in str(err.value) and KEY not in str(err.value) and "***" in str(err.value)
    assert (out / "sft.parquet").exists() and debug_log.stat().st_size > 0
    assert "HTTP 401" in debug_log.read_text() or "401" in debug_log.read_text()
    assert scan(tmp_path) == []


def test_key_only_from_the_named_environment_variable():
    settings = TeacherSettings(provider="openai", api_key_env="TEACHER_KEY_FOR_TEST")
    assert api_key(settings, {"TEACHER_KEY_FOR_TEST": KEY}) == KEY
    with pytest.raises(CellDualityError, match=r"environment variable TEACHER_KEY_FOR_TEST"):
        api_key(settings, {})
    local = TeacherSettings(provider="openai", base_url="http://127.0.0.1:9/v1")
    assert api_key(local, {}) is None  # local OpenAI-compatible servers need no key
    assert api_key(TeacherSettings(), {}) is None  # markers
    assert "api_key_env" not in settings.rerun_params()  # not even the variable name is a recorded param
