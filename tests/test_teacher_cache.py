"""Response cache: keys, persistence, and a killed run that resumes without re-requesting cached samples."""

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from fake_llm_server import FakeLLMServer

from cellduality.teacher.cache import CachedResponse, ResponseCache, cache_key, prompt_hash
from cellduality.teacher.providers import GenerationParams

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "Cell: CD3D IL32"}]

CLIENT = r"""
import json, sys
sys.path.insert(0, {src!r})
from cellduality.tasks.prompts import annotation_prompt
from cellduality.teacher.cache import ResponseCache
from cellduality.teacher.providers import OpenAIProvider
from cellduality.teacher.runner import TeacherRunner, TeacherSettings

url, cache_path, n_prompts = sys.argv[1], sys.argv[2], int(sys.argv[3])
prompts = [(f"p{{i}}", annotation_prompt(["CD3D", "IL32", f"GENE{{i}}"], None, ["CD56+ NK", "CD19+ B"]))
           for i in range(n_prompts)]
settings = TeacherSettings(provider="openai", n_samples=3, samples_per_request=1, concurrency=4, progress=False)
with ResponseCache(cache_path) as cache:
    runner = TeacherRunner(OpenAIProvider("gpt-4o", "sk-resume-test", url), settings, cache)
    out = runner.run(prompts)
print(json.dumps(runner.usage.as_dict() | {{"complete": sum(len(v) == 3 for v in out.values())}}))
"""


def test_key_depends_on_provider_model_params_prompt_and_index_only():
    p = GenerationParams(temperature=0.7, max_tokens=100).as_key()
    key = cache_key("openai", "gpt-4o", p, MESSAGES, 0)
    assert key == cache_key("openai", "gpt-4o", dict(reversed(list(p.items()))), [dict(m) for m in MESSAGES], 0)
    others = [cache_key("gemini", "gpt-4o", p, MESSAGES, 0), cache_key("openai", "gpt-4o-mini", p, MESSAGES, 0),
              cache_key("openai", "gpt-4o", GenerationParams(temperature=1.0, max_tokens=100).as_key(), MESSAGES, 0),
              cache_key("openai", "gpt-4o", p, MESSAGES[1:], 0), cache_key("openai", "gpt-4o", p, MESSAGES, 1)]
    assert len({key, *others}) == 6


def test_cache_persists_and_uses_wal(tmp_path):
    path = tmp_path / "c" / "responses.sqlite"
    with ResponseCache(path) as cache:
        cache.put_many([("k1", "openai", "m", prompt_hash(MESSAGES), 0, CachedResponse("text", 10, 5, "stop"))])
        assert len(cache) == 1
    with ResponseCache(path) as cache:
        assert cache.get_many(["k1", "k2"]) == {"k1": CachedResponse("text", 10.0, 5.0, "stop", False)}
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_batch_jobs_are_recorded(tmp_path):
    with ResponseCache(tmp_path / "r.sqlite") as cache:
        cache.add_batch_job("batch_1", "openai", "gpt-4o", {"a": ["k1", "k2"]}, "validating")
        cache.set_batch_status("batch_1", "in_progress")
        jobs = cache.open_batch_jobs("openai", "gpt-4o", ["ingested"])
        assert [(j.batch_id, j.status, j.requests) for j in jobs] == [("batch_1", "in_progress", {"a": ["k1", "k2"]})]
        cache.set_batch_status("batch_1", "ingested")
        assert cache.open_batch_jobs("openai", "gpt-4o", ["ingested"]) == []


def _client(tmp_path: Path, url: str, cache: Path, n_prompts: int) -> list[str]:
    script = tmp_path / "client.py"
    script.write_text(CLIENT.format(src=str(ROOT / "src")))
    return [sys.executable, str(script), url, str(cache), str(n_prompts)]


def _cached_prompts(cache: Path) -> Counter:
    with sqlite3.connect(cache) as db:
        return Counter(h for (h,) in db.execute("SELECT prompt_hash FROM responses"))


def test_killed_run_resumes_without_requesting_cached_samples(tmp_path):
    n_prompts, n_samples = 40, 3
    cache = tmp_path / "cache" / "responses.sqlite"
    with FakeLLMServer(latency_s=0.05) as server:
        cmd = _client(tmp_path, server.url + "/v1", cache, n_prompts)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while sum(r["status"] == 200 for r in server.requests) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # a crash: no cleanup, no flush
        proc.wait(10)
        time.sleep(0.2)  # in-flight requests finish server-side (their responses are lost)
        served_before = Counter(r["prompt_hash"] for r in server.requests)
        n_before = len(server.requests)
        cached_before = _cached_prompts(cache)
        assert 0 < sum(cached_before.values()) < n_prompts * n_samples, "kill landed outside the run"

        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        usage = json.loads(done.stdout.strip().splitlines()[-1])
        after = Counter(r["prompt_hash"] for r in server.requests[n_before:])

    assert usage["complete"] == n_prompts
    assert usage["cached_samples"] == sum(cached_before.values())
    assert usage["new_samples"] == n_prompts * n_samples - sum(cached_before.values())
    assert all(after[h] == n_samples - cached_before[h] for h in set(after) | set(cached_before))
    fully_cached = {h for h, c in cached_before.items() if c == n_samples}
    assert fully_cached and not fully_cached & set(after)  # no cached response is requested again
    for h in served_before:  # every sample was paid at most once more than it was lost in flight
        assert served_before[h] >= cached_before[h]
    assert _cached_prompts(cache) == Counter({h: n_samples for h in _cached_prompts(cache)})
    assert len(_cached_prompts(cache)) == n_prompts
