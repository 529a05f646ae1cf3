"""OpenAI Batch API mode against the fake server: upload, create, poll, download, cache; resume, no resubmit."""

import pytest
from fake_llm_server import FakeLLMServer
from test_teacher_providers import prompts

from cellduality.errors import CellDualityError
from cellduality.teacher.cache import ResponseCache
from cellduality.teacher.providers import OpenAIProvider
from cellduality.teacher.runner import TeacherRunner, TeacherSettings


def settings(**kw) -> TeacherSettings:
    base = dict(provider="openai", n_samples=3, batch_api=True, batch_poll_s=0.05, progress=False,
                price_in=2.5, price_out=10.0, batch_discount=0.5)
    return TeacherSettings(**(base | kw))


def apis(server: FakeLLMServer) -> list[str]:
    return [r["api"] for r in server.requests]


def test_batch_mode_round_trip(tmp_path):
    with FakeLLMServer(batch_polls_to_complete=2) as server, ResponseCache(tmp_path / "c.sqlite") as cache:
        runner = TeacherRunner(OpenAIProvider("gpt-4o", "sk-b", server.url + "/v1"), settings(), cache)
        out = runner.run(prompts(5))
        assert all(len(v) == 3 and all(s.batch for s in v) for v in out.values())
        assert apis(server).count("openai-files") == 1 and apis(server).count("openai-batches") == 1
        assert apis(server).count("openai-batch-request") == 5 and "openai" not in apis(server)  # no live calls
        assert [r["n"] for r in server.requests if r["api"] == "openai-batch-request"] == [3] * 5
        u = runner.usage
        assert u.new_samples == 15 and u.cost_usd == pytest.approx(0.5 * (u.tokens_in * 2.5 + u.tokens_out * 10) / 1e6)
        # a rerun is served entirely from the cache
        again = TeacherRunner(OpenAIProvider("gpt-4o", "sk-b", server.url + "/v1"), settings(), cache)
        again.run(prompts(5))
        assert again.usage.cached_samples == 15 and apis(server).count("openai-batches") == 1
        assert again.usage.cached_cost_usd == pytest.approx(u.cost_usd)


def test_interrupted_batch_is_resumed_not_resubmitted(tmp_path):
    with FakeLLMServer(batch_polls_to_complete=3) as server, ResponseCache(tmp_path / "c.sqlite") as cache:
        first = TeacherRunner(OpenAIProvider("gpt-4o", "sk-b", server.url + "/v1"),
                              settings(batch_max_wait_s=0.01), cache)
        with pytest.raises(CellDualityError, match="still running"):
            first.run(prompts(4))
        assert len(cache) == 0 and cache.open_batch_jobs("openai", "gpt-4o", ["ingested"])
        second = TeacherRunner(OpenAIProvider("gpt-4o", "sk-b", server.url + "/v1"), settings(), cache)
        out = second.run(prompts(4))
        assert all(len(v) == 3 for v in out.values())
        assert apis(server).count("openai-batches") == 1 and apis(server).count("openai-files") == 1
        assert cache.open_batch_jobs("openai", "gpt-4o", ["ingested"]) == []
