"""fetch_model: a hub base model is copied once into results/models/hub, from a fake local Hugging Face cache
(offline: the tests never touch the network), and the token never lands in a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cellduality.errors import CellDualityError
from cellduality.training.hub import SOURCE_FILE, fetch_base_model, is_hub_id

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_secret_token_never_written_0123456789"


def fake_cache(root: Path, repo: str = "acme/tiny-llm") -> Path:
    """The layout huggingface_hub's cache uses: blobs, a snapshot of symlinks to them and refs/main."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\x00weights",
             "tokenizer.json": b"{}", "original/consolidated.pth": b"skip me"}
    for name, data in files.items():
        blob = folder / "blobs" / f"blob{abs(hash(name))}"
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(blob, snapshot / name)
    return root


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = fake_cache(tmp_path / "hf-cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_is_hub_id(tmp_path):
    assert is_hub_id("meta-llama/Llama-3.2-3B-Instruct")
    assert not is_hub_id("embedded") and not is_hub_id(str(tmp_path)) and not is_hub_id("a/b/c")


def test_hub_model_is_copied_as_plain_files(offline_cache, tmp_path):
    out = fetch_base_model("acme/tiny-llm", tmp_path / "results" / "models" / "hub")
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", "model.safetensors", "tokenizer.json",
                                                            SOURCE_FILE])
    assert not any(p.is_symlink() for p in out.iterdir())
    assert (out / "model.safetensors").read_bytes() == b"\x00weights"
    assert json.loads((out / SOURCE_FILE).read_text()) == {"repo_id": "acme/tiny-llm", "revision": None,
                                                          "commit": COMMIT}
    assert not any(TOKEN in p.read_text(errors="ignore") for p in out.iterdir())


def test_model_missing_offline_is_one_line(offline_cache, tmp_path):
    with pytest.raises(CellDualityError, match="not in the local Hugging Face cache") as err:
        fetch_base_model("acme/other", tmp_path / "hub")
    assert "\n" not in str(err.value) and not (tmp_path / "hub").exists()


def test_fetch_model_command_keeps_the_token_out_of_the_log(offline_cache, tmp_path):
    out, log = tmp_path / "hub", tmp_path / "fetch.log"
    settings = json.dumps({"model": {"source": "acme/tiny-llm", "revision": None, "token_env": "HF_TOKEN"}})
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-m", "cellduality.cli", "fetch-model", "--settings", settings,
                             "--files", json.dumps({"out": str(out)}), "--log", str(log)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr + log.read_text()
    assert (out / "config.json").exists() and COMMIT in log.read_text()
    assert TOKEN not in log.read_text() + result.stdout + result.stderr
