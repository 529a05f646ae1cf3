"""The real openai and google-genai clients against the local fake server: answers, usage, retries, errors."""

import time

import pytest
from fake_llm_server import FakeLLMServer, Fault

from cellduality.errors import CellDualityError
from cellduality.tasks.prompts import annotation_prompt, generation_prompt
from cellduality.teacher.providers import (
    FatalError,
    GeminiProvider,
    GenerationParams,
    OpenAIProvider,
    RequestError,
    TeacherRequest,
    TransientError,
    error_for_status,
    parse_retry_after,
)
from cellduality.teacher.runner import TeacherRunner, TeacherSettings

CANDIDATES = ["CD56+ NK", "CD8+ Cytotoxic T", "CD14+ Monocyte"]


def prompts(n: int, tag: str = "") -> list[tuple[str, list[dict[str, str]]]]:
    genes = "NKG7 GNLY CCL5 IL32 CD3D FTL GZMA CST7".split()
    return [(f"p{tag}{i}", annotation_prompt(genes[i % 3:] + [f"GENE{tag}{i}"], None, CANDIDATES))
            for i in range(n)]


def provider(kind: str, server: FakeLLMServer, timeout_s: float = 2.0):
    if kind == "openai":
        return OpenAIProvider("gpt-4o", "sk-test-key", server.url + "/v1", timeout_s)
    return GeminiProvider("gemini-2.5-pro", "test-key", server.url, timeout_s)


def settings(**kw) -> TeacherSettings:
    base = dict(provider="openai", n_samples=2, concurrency=4, max_retries=3, backoff_s=0.01, max_backoff_s=0.05,
                timeout_s=0.5, progress=False)
    return TeacherSettings(**(base | kw))


@pytest.fixture
def server():
    with FakeLLMServer(hang_s=1.5) as srv:
        yield srv


@pytest.mark.parametrize("kind", ["openai", "gemini"])
def test_answers_usage_and_n_samples(server, kind):
    runner = TeacherRunner(provider(kind, server), settings(n_samples=3))
    out = runner.run(prompts(4))
    assert all(len(samples) == 3 for samples in out.values())
    for samples in out.values():
        for s in samples:
            assert s.text.startswith("<think>") and "<answer>" in s.text and s.tokens_in > 0 and s.tokens_out > 0
    assert len(server.requests) == 4 and {r["n"] for r in server.requests} == {3}  # one request per prompt
    assert runner.usage.new_samples == 12 and runner.usage.retries == 0
    assert runner.usage.tokens_in == pytest.approx(sum(s.tokens_in for v in out.values() for s in v))
    assert runner.usage.tokens_out == pytest.approx(sum(s.tokens_out for v in out.values() for s in v))


@pytest.mark.parametrize("kind", ["openai", "gemini"])
def test_transient_faults_are_retried(server, kind):
    server.faults[:] = [Fault("429", match="GENE1\\n", times=1, retry_after_ms=50), Fault("500", match="GENE2\\n"),
                        Fault("timeout", match="GENE3\\n"), Fault("malformed", match="GENE4\\n"),
                        Fault("empty", match="GENE0\\n")]
    server.hang_s = 6.0  # far past the client's 2 s timeout; ordinary requests stay well under it on a busy machine
    runner = TeacherRunner(provider(kind, server, timeout_s=2.0), settings(n_samples=1))
    out = runner.run(prompts(6))
    assert all(len(s) == 1 for s in out.values())
    errors = runner.usage.errors
    assert errors["http_429"] == 1 and errors["http_500"] == 1 and errors["timeout"] == 1
    assert errors["malformed"] == 2  # truncated JSON and a body without choices / candidates
    assert runner.usage.retries == 5 and runner.usage.failed_requests == 0
    assert len(server.requests) == 6 + 5  # every fault costs exactly one extra request


def test_retry_after_header_is_honoured(server):
    server.faults[:] = [Fault("429", match="GENE0\\n", retry_after=1)]
    runner = TeacherRunner(provider("openai", server), settings(n_samples=1, backoff_s=0.0, max_backoff_s=0.0))
    start = time.monotonic()
    runner.run(prompts(1))
    assert time.monotonic() - start >= 1.0  # waited the server's Retry-After, not the (zero) backoff
    assert [r["status"] for r in server.requests] == [429, 200]


def test_gemini_retry_info_is_honoured(server):
    server.faults[:] = [Fault("429", match="GENE0\\n", retry_after=0.3)]
    runner = TeacherRunner(provider("gemini", server), settings(n_samples=1, backoff_s=0.0, max_backoff_s=0.0))
    start = time.monotonic()
    runner.run(prompts(1))
    assert time.monotonic() - start >= 0.3


def test_persistent_failure_is_counted_and_fails_the_run(server):
    server.faults[:] = [Fault("500", match="GENE1\\n", times=99)]
    runner = TeacherRunner(provider("openai", server), settings(n_samples=1, max_retries=2))
    out = runner.run(prompts(3))
    assert out["p1"] == [] and len(out["p0"]) == 1
    assert runner.usage.failed_requests == 1 and runner.usage.retries == 2
    with pytest.raises(CellDualityError, match="1 of 3 teacher requests failed"):
        runner.check_failures()


def test_bad_request_is_not_retried(server):
    server.faults[:] = [Fault("400", match="GENE1\\n")]
    runner = TeacherRunner(provider("gemini", server), settings(n_samples=1))
    out = runner.run(prompts(2))
    assert out["p1"] == [] and runner.usage.retries == 0 and runner.usage.errors["http_400"] == 1


@pytest.mark.parametrize("kind", ["openai", "gemini"])
def test_authentication_error_stops_the_run(server, kind):
    server.faults[:] = [Fault("401", times=99)]
    runner = TeacherRunner(provider(kind, server), settings(n_samples=1, concurrency=1))
    with pytest.raises(CellDualityError, match="401") as err:
        runner.run(prompts(5))
    assert len(server.requests) < 5  # stopped early
    assert f" at {server.url}" in str(err.value)  # names the endpoint


def test_provider_maps_errors_directly(server):
    import asyncio

    server.faults[:] = [Fault("429", retry_after=2.5)]
    p = provider("openai", server)
    req = TeacherRequest("x", generation_prompt("B cell", 5), (0,))
    with pytest.raises(TransientError) as err:
        asyncio.run(p.generate(req, GenerationParams()))
    assert err.value.status == 429 and err.value.retry_after == 2.5


def test_error_kinds_and_retry_after_parsing():
    assert isinstance(error_for_status(429, "x"), TransientError)
    assert isinstance(error_for_status(503, "x"), TransientError)
    assert isinstance(error_for_status(401, "x"), FatalError)
    assert isinstance(error_for_status(404, "x"), FatalError)
    assert isinstance(error_for_status(400, "x"), RequestError)
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0) == 10.0
    assert parse_retry_after({}) is None and parse_retry_after({"Retry-After": "soon"}) is None


def test_backoff_is_exponential_with_jitter_and_capped():
    runner = TeacherRunner(None, settings(backoff_s=1.0, max_backoff_s=5.0))  # type: ignore[arg-type]
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 5.0)]:
        delays = [runner.backoff_delay(attempt, None) for _ in range(50)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in delays) and len(set(delays)) > 1
    assert 7.0 <= runner.backoff_delay(3, 7.0) <= 7.7  # Retry-After wins, even above the cap


def test_identical_prompts_are_sampled_once(server, tmp_path):
    from cellduality.teacher.cache import ResponseCache

    same = prompts(1)[0][1]
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        runner = TeacherRunner(provider("openai", server), settings(n_samples=2), cache)
        out = runner.run([("a", same), ("b", same), *prompts(1, "x")])
    assert len(server.requests) == 2 and [s.text for s in out["a"]] == [s.text for s in out["b"]]
    assert all(s.cached and s.prompt_id == "b" for s in out["b"]) and runner.usage.cached_samples == 2


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.mark.parametrize("kind", ["openai", "gemini"])
@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "no-such-teacher-host.invalid"])
def test_an_unreachable_endpoint_stops_the_run_at_once_naming_the_url(kind, host):
    """Connection refused and an unknown host name are not retried with back-off: one line names the URL."""
    url = f"http://{host.format(port=_closed_port())}"
    teacher = (OpenAIProvider("gpt-4o", "sk-test-key", url + "/v1", 2.0) if kind == "openai" else
               GeminiProvider("gemini-2.5-pro", "test-key", url, 2.0))
    runner = TeacherRunner(teacher, settings(n_samples=1, concurrency=2, max_retries=5, backoff_s=5.0,
                                             max_backoff_s=60.0))
    start = time.monotonic()
    with pytest.raises(CellDualityError) as err:
        runner.run(prompts(6))
    assert time.monotonic() - start < 30  # five back-offs of 5-60 s would take minutes
    message = str(err.value)
    assert f"cannot reach {url}" in message and ("connection refused" in message or "host name not found" in message)
    assert runner.usage.retries == 0 and "\n" not in message


def test_an_endpoint_that_answered_before_is_retried_when_it_goes_away():
    """After a first answer, a refused connection is a restart to wait for, not a wrong URL."""
    import asyncio

    from cellduality.teacher.providers import Completion, TeacherProvider, UnreachableError

    class Flaky(TeacherProvider):
        name = "openai"
        calls = 0

        async def generate(self, request, params):
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise UnreachableError("cannot reach http://127.0.0.1:1/v1 (connection refused)")
            return [Completion(text="<answer>x</answer>", tokens_in=1, tokens_out=1) for _ in request.sample_indices]

    runner = TeacherRunner(Flaky("m"), settings(n_samples=1, concurrency=1))
    out = asyncio.run(runner.run_async(prompts(3)))
    assert all(len(samples) == 1 for samples in out.values()) and runner.usage.retries == 1
