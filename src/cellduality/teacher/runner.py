"""Run a teacher over many prompts: N samples each, bounded concurrency, retries, cache, cost accounting.

:class:`TeacherRunner` asks ``provider`` for ``n_samples`` completions of every prompt. Samples already in
the :class:`~cellduality.teacher.cache.ResponseCache` are reused (never requested again); the missing
ones of a prompt are requested together (``n`` > 1 where the provider allows it, up to
``samples_per_request``) by ``concurrency`` workers. A transient failure (429, 5xx, timeout, dropped
connection, malformed body) is retried up to ``max_retries`` times after ``backoff_s * 2**attempt`` seconds
("equal jitter": a uniform draw in [50%, 100%] of that, capped at ``max_backoff_s``), or exactly the
server's Retry-After (+ up to 10% jitter) when it sent one; a Retry-After also pauses every worker, so a
rate-limited account is not hammered. Each response is written to the cache the moment it arrives.
Authentication / permission / unknown-model errors stop the run at once, and so does an endpoint that refuses
the connection or whose host name does not resolve, unless it has answered earlier in the run; a request that still fails after
its retries is counted, and the run fails at the end if more than ``max_failed_fraction`` of the requests
failed (rerun: only the missing samples are requested). ``batch_api: true`` sends the missing requests
through the OpenAI Batch API instead (:mod:`cellduality.teacher.openai_batch`).

API keys come only from the environment variable named by ``api_key_env``; they are redacted from every
log record and error message while a run is active and are never part of a cache key or an output.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from cellduality.config import Settings, setting
from cellduality.data.label_profiles import DataProfiles
from cellduality.errors import CellDualityError
from cellduality.teacher.cache import CachedResponse, ResponseCache, cache_key, prompt_hash
from cellduality.teacher.openai_batch import run_batch
from cellduality.teacher.providers import (
    Completion,
    FatalError,
    GeminiProvider,
    GenerationParams,
    OpenAIProvider,
    RequestError,
    TeacherProvider,
    TeacherRequest,
    TransientError,
    UnreachableError,
)

log = logging.getLogger("cellduality.teacher")

PROVIDERS = ("markers", "openai", "gemini")
DEFAULT_MODELS = {"markers": "markers-v1", "openai": "gpt-4o", "gemini": "gemini-2.5-pro"}
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "gemini": "GEMINI_API_KEY"}


@dataclass(frozen=True)
class TeacherSettings(Settings):
    """Config ``teacher.*``: meanings and defaults of every key are in config/schema.yaml. Fields declared
    ``reruns=False`` say how the job talks to the API (endpoint, concurrency, retries, timeouts, batch mode, cache,
    progress bar), not what ends up in the SFT data: changing them reruns nothing."""

    SECTION: ClassVar[str] = "teacher"
    provider: str = setting("teacher.provider")
    model: str | None = setting("teacher.model")
    base_url: str | None = setting("teacher.base_url", reruns=False)
    api_key_env: str | None = setting("teacher.api_key_env", reruns=False)
    n_samples: int = setting("teacher.n_samples")
    temperature: float = setting("teacher.temperature")
    max_tokens: int = setting("teacher.max_tokens")
    top_p: float | None = setting("teacher.top_p")
    seed: int | None = setting("teacher.seed")
    samples_per_request: int = setting("teacher.samples_per_request", reruns=False)
    concurrency: int = setting("teacher.concurrency", reruns=False)
    max_retries: int = setting("teacher.max_retries", reruns=False)
    timeout_s: float = setting("teacher.timeout_s", reruns=False)
    backoff_s: float = setting("teacher.backoff_s", reruns=False)
    max_backoff_s: float = setting("teacher.max_backoff_s", reruns=False)
    max_failed_fraction: float = setting("teacher.max_failed_fraction", reruns=False)
    batch_api: bool = setting("teacher.batch_api", reruns=False)
    batch_poll_s: float = setting("teacher.batch_poll_s", reruns=False)
    batch_max_wait_s: float = setting("teacher.batch_max_wait_s", reruns=False)
    price_in: float = setting("teacher.price_in")
    price_out: float = setting("teacher.price_out")
    batch_discount: float = setting("teacher.batch_discount")
    max_cost_usd: float | None = setting("teacher.max_cost_usd", reruns=False)
    cache: bool = setting("teacher.cache", reruns=False)
    cache_dir: str | None = setting("teacher.cache_dir", reruns=False)
    cache_sync: str = setting("teacher.cache_sync", reruns=False)
    max_prompts: int | None = setting("teacher.max_prompts")
    max_prompts_per_task: Mapping[str, int | None] = setting("teacher.max_prompts_per_task")
    progress: bool = setting("teacher.progress", reruns=False)
    max_reasoning_lines: int | None = setting("teacher.max_reasoning_lines")
    knowledge: str = setting("teacher.knowledge")
    dual_answers: str = setting("teacher.dual_answers")

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise CellDualityError(f"teacher.provider must be one of {', '.join(PROVIDERS)}; got {self.provider!r}")
        if self.n_samples < 1 or self.concurrency < 1 or self.samples_per_request < 1:
            raise CellDualityError("teacher.n_samples, teacher.concurrency and teacher.samples_per_request "
                                   "must be >= 1")

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODELS[self.provider]

    @property
    def key_env(self) -> str | None:
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.provider)

    def prompt_cap(self, task: str) -> int | None:
        """Most primal SFT prompts of ``task`` sent to the teacher (None = all)."""
        return self.max_prompts_per_task.get(task, self.max_prompts)

    def generation_params(self) -> GenerationParams:
        return GenerationParams(self.temperature, self.max_tokens, self.top_p, self.seed)

    def cost(self, tokens_in: float, tokens_out: float) -> float:
        return (tokens_in * self.price_in + tokens_out * self.price_out) / 1e6


def api_key(settings: TeacherSettings, env: Mapping[str, str] | None = None) -> str | None:
    """The API key from the environment variable ``settings.key_env`` (None for the markers teacher)."""
    if settings.provider == "markers":
        return None
    env = os.environ if env is None else env
    key = env.get(settings.key_env or "")
    if not key and not settings.base_url:
        raise CellDualityError(
            f"teacher.provider {settings.provider} needs an API key in the environment variable "
            f"{settings.key_env} (set teacher.api_key_env to use another variable; keys never go in the config)"
        )
    return key or None


def make_provider(settings: TeacherSettings, env: Mapping[str, str] | None = None,
                  species: str = "human", data: DataProfiles | None = None) -> TeacherProvider:
    """The configured provider (the API key is read from the environment here, and only here); the markers
    teacher also learns ``data`` (the training cells' label profiles) per ``teacher.knowledge``."""
    if settings.provider == "markers":
        from cellduality.teacher.markers.knowledge import Knowledge
        from cellduality.teacher.markers.teacher import MarkersProvider

        knowledge = Knowledge.load(species=species)
        if data is not None:
            knowledge = knowledge.with_data(data, settings.knowledge)
        return MarkersProvider(settings.model_name, knowledge, max_reasoning_lines=settings.max_reasoning_lines)
    key = api_key(settings, env)
    if settings.provider == "openai":
        return OpenAIProvider(settings.model_name, key, settings.base_url, settings.timeout_s,
                              settings.samples_per_request)
    return GeminiProvider(settings.model_name, key, settings.base_url, settings.timeout_s)


# ---------------------------------------------------------------- secrets

def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class _RedactFilter(logging.Filter):
    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True


@contextlib.contextmanager
def redacting_logs(secrets: Sequence[str]) -> Iterator[None]:
    """Redact ``secrets`` from every record reaching the root logger's handlers while the block runs."""
    secrets = [s for s in secrets if s]
    if not secrets:
        yield
        return
    filt = _RedactFilter(secrets)
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(filt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(filt)


# ---------------------------------------------------------------- results and accounting

@dataclass(frozen=True)
class Sample:
    """One completion of one prompt."""

    prompt_id: str
    sample_index: int
    text: str
    tokens_in: float
    tokens_out: float
    finish_reason: str | None
    cached: bool
    batch: bool = False


@dataclass(frozen=True)
class WorkUnit:
    """The missing samples of one prompt that go into one request."""

    prompt_id: str
    messages: list[dict[str, str]]
    sample_indices: tuple[int, ...]
    keys: tuple[str, ...]

    @property
    def n(self) -> int:
        return len(self.sample_indices)

    def request(self) -> TeacherRequest:
        return TeacherRequest(self.prompt_id, self.messages, self.sample_indices)


@dataclass
class Usage:
    """Requests, retries, failures, tokens and cost of a run (new = paid now, cached = reused)."""

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    failed_requests: int = 0
    new_samples: int = 0
    cached_samples: int = 0
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    cost_usd: float = 0.0
    cached_cost_usd: float = 0.0
    wall_s: float = 0.0
    errors: Counter = field(default_factory=Counter)
    last_error: str = ""

    def add(self, other: Usage) -> None:
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "last_error":
                self.last_error = b or a
            elif f.name == "errors":
                a.update(b)
            else:
                setattr(self, f.name, a + b)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("errors", "last_error")}
        out["errors"] = dict(self.errors)
        for key in ("tokens_in", "tokens_out"):
            out[key] = round(out[key], 1)
        for key in ("cost_usd", "cached_cost_usd"):
            out[key] = round(out[key], 6)
        out["wall_s"] = round(out["wall_s"], 3)
        out["requests_per_s"] = round(self.requests / self.wall_s, 2) if self.wall_s > 0 else None
        return out


# ---------------------------------------------------------------- the runner

class TeacherRunner:
    """Samples ``settings.n_samples`` completions per prompt from ``provider`` (see module docstring)."""

    def __init__(self, provider: TeacherProvider, settings: TeacherSettings, cache: ResponseCache | None = None,
                 secrets: Sequence[str] = ()) -> None:
        self.provider = provider
        self.settings = settings
        self.cache = cache if provider is None or provider.cache_responses else None
        self.secrets = [s for s in secrets if s]
        self.params = settings.generation_params()
        self.usage = Usage()
        self._pause_until = 0.0
        self._aliases: dict[str, str] = {}  # prompt id -> the id whose identical prompt was sampled
        self._reached = False  # the endpoint has answered in this run

    # ------------------------------------------------------------ public

    def run(self, prompts: Sequence[tuple[str, list[dict[str, str]]]],
            desc: str = "teacher") -> dict[str, list[Sample]]:
        """Blocking wrapper of :meth:`run_async`."""
        return asyncio.run(self.run_async(prompts, desc))

    async def run_async(self, prompts: Sequence[tuple[str, list[dict[str, str]]]],
                        desc: str = "teacher") -> dict[str, list[Sample]]:
        """``prompt_id -> samples`` (sorted by sample index; failed samples are absent)."""
        start = time.monotonic()
        results: dict[str, dict[int, Sample]] = {pid: {} for pid, _ in prompts}
        units = self._plan(prompts, results)
        total = len(prompts) * self.settings.n_samples
        with redacting_logs(self.secrets), self._progress(total, total - sum(u.n for u in units), desc) as bar:
            try:
                if units and self.settings.batch_api and self.provider.batch_capable:
                    await run_batch(self, units, results, bar)
                elif units:
                    await self._run_pool(units, results, bar)
            except* FatalError as group:
                err = group.exceptions[0]
                where = self.provider.endpoint
                at = f" at {where}" if where and where not in str(err) else ""
                raise CellDualityError(
                    f"teacher {self.provider.name}/{self.provider.model}{at}: {self.redacted(str(err))} — stopping "
                    f"(check teacher.model, teacher.base_url and the key in ${self.settings.key_env})"
                ) from None
            finally:
                await self.provider.aclose()
        for alias, owner in self._aliases.items():
            for i, s in results[owner].items():
                results[alias][i] = dataclasses.replace(s, prompt_id=alias, cached=True)
                self.usage.cached_samples += 1
                self.usage.cached_cost_usd += self._cost(s.tokens_in, s.tokens_out, s.batch)
        self.usage.wall_s += time.monotonic() - start
        return {pid: [by_index[i] for i in sorted(by_index)] for pid, by_index in results.items()}

    def check_failures(self) -> None:
        """Raise when more than ``max_failed_fraction`` of the requests failed after their retries."""
        u = self.usage
        if u.failed_requests and u.failed_requests > self.settings.max_failed_fraction * max(u.requests, 1):
            raise CellDualityError(
                f"{u.failed_requests} of {u.requests} teacher requests failed after retries (last error: "
                f"{self.redacted(u.last_error)}); rerun to retry them (cached responses are kept), or raise "
                "teacher.max_failed_fraction"
            )

    # ------------------------------------------------------------ planning and storing

    def _plan(self, prompts: Sequence[tuple[str, list[dict[str, str]]]],
              results: dict[str, dict[int, Sample]]) -> list[WorkUnit]:
        n = self.settings.n_samples
        p = self.params.as_key()
        name, model = self.provider.name, self.provider.model
        keyed = [(pid, msgs, [cache_key(name, model, p, msgs, i) for i in range(n)]) for pid, msgs in prompts]
        cached = self.cache.get_many(k for _, _, keys in keyed for k in keys) if self.cache else {}
        per_request = max(1, min(self.provider.max_samples_per_request, self.settings.samples_per_request))
        units = []
        owners: dict[str, str] = {}
        for pid, msgs, keys in keyed:
            if self.cache is not None:  # identical prompts under several ids are sampled once
                owner = owners.setdefault(keys[0], pid)
                if owner != pid:
                    self._aliases[pid] = owner
                    continue
            missing = []
            for i, key in enumerate(keys):
                hit = cached.get(key)
                if hit is None:
                    missing.append(i)
                    continue
                results[pid][i] = Sample(pid, i, hit.text, hit.tokens_in, hit.tokens_out, hit.finish_reason, True,
                                         hit.batch)
                self.usage.cached_samples += 1
                self.usage.cached_cost_usd += self._cost(hit.tokens_in, hit.tokens_out, hit.batch)
            for start in range(0, len(missing), per_request):
                idx = tuple(missing[start : start + per_request])
                units.append(WorkUnit(pid, msgs, idx, tuple(keys[i] for i in idx)))
        return units

    def _cost(self, tokens_in: float, tokens_out: float, batch: bool) -> float:
        return self.settings.cost(tokens_in, tokens_out) * (self.settings.batch_discount if batch else 1.0)

    def store(self, unit: WorkUnit, completions: Sequence[Completion], results: dict[str, dict[int, Sample]],
              batch: bool = False) -> None:
        """Record a unit's completions: cache first (durable), then results and accounting."""
        rows = []
        phash = prompt_hash(unit.messages)
        for index, key, c in zip(unit.sample_indices, unit.keys, completions):
            rows.append((key, self.provider.name, self.provider.model, phash, index,
                         CachedResponse(c.text, c.tokens_in, c.tokens_out, c.finish_reason, batch)))
        if self.cache is not None:
            self.cache.put_many(rows)
        for index, c in zip(unit.sample_indices, completions):
            results[unit.prompt_id][index] = Sample(unit.prompt_id, index, c.text, c.tokens_in, c.tokens_out,
                                                    c.finish_reason, False, batch)
            self.usage.new_samples += 1
            self.usage.tokens_in += c.tokens_in
            self.usage.tokens_out += c.tokens_out
            self.usage.cost_usd += self._cost(c.tokens_in, c.tokens_out, batch)

    def record_failure(self, unit: WorkUnit, err: Exception) -> None:
        self.usage.failed_requests += 1
        self.usage.last_error = self.redacted(str(err))
        log.warning("teacher request for %s failed: %s", unit.prompt_id, self.usage.last_error)

    def redacted(self, text: str) -> str:
        return redact(text, self.secrets)

    # ------------------------------------------------------------ concurrency and retries

    async def _run_pool(self, units: list[WorkUnit], results: dict[str, dict[int, Sample]], bar: Any) -> None:
        queue: asyncio.Queue[WorkUnit] = asyncio.Queue()
        for unit in units:
            queue.put_nowait(unit)

        async def worker() -> None:
            while True:
                try:
                    unit = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                completions = await self._call(unit)
                if completions is not None:
                    self.store(unit, completions, results)
                    bar.update(len(completions))
                    if self.settings.price_in or self.settings.price_out:
                        bar.set_postfix(cost=f"${self.usage.cost_usd:.4f}", refresh=False)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self.settings.concurrency, len(units))):
                group.create_task(worker())

    async def _call(self, unit: WorkUnit) -> list[Completion] | None:
        s = self.settings
        self.usage.requests += 1
        for attempt in range(s.max_retries + 1):
            await self._wait_for_pause()
            self.usage.attempts += 1
            try:
                async with asyncio.timeout(s.timeout_s * 2 + 5):  # guard against a hung SDK call
                    completions = await self.provider.generate(unit.request(), self.params)
                if len(completions) != unit.n:
                    raise TransientError(f"{len(completions)} completions for {unit.n} samples")
                self._reached = True
                return completions
            except TimeoutError:
                err: TransientError = TransientError("request timed out (runner guard)")
            except UnreachableError as exc:
                self.usage.errors[_error_label(exc)] += 1
                if not self._reached:  # nothing answered yet: a wrong URL or no server, not a hiccup
                    raise FatalError(str(exc)) from None
                err = exc
            except TransientError as exc:
                err = exc
            except RequestError as exc:
                self.usage.errors[_error_label(exc)] += 1
                self.record_failure(unit, exc)
                return None
            except FatalError as exc:
                self.usage.errors[_error_label(exc)] += 1
                raise
            self.usage.errors[_error_label(err)] += 1
            if attempt == s.max_retries:
                self.record_failure(unit, err)
                return None
            self.usage.retries += 1
            delay = self.backoff_delay(attempt, err.retry_after)
            if err.retry_after is not None:
                self._pause_until = max(self._pause_until, time.monotonic() + delay)
            log.info("teacher: %s for %s (attempt %d of %d); retrying in %.2f s", self.redacted(str(err)),
                     unit.prompt_id, attempt + 1, s.max_retries + 1, delay)
            await asyncio.sleep(delay)
        return None  # pragma: no cover

    def backoff_delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after * (1.0 + 0.1 * random.random())
        ceiling = min(self.settings.max_backoff_s, self.settings.backoff_s * 2 ** attempt)
        return ceiling * (0.5 + 0.5 * random.random())

    async def _wait_for_pause(self) -> None:
        wait = self._pause_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    # ------------------------------------------------------------ progress

    @contextlib.contextmanager
    def _progress(self, total: int, initial: int, desc: str) -> Iterator[Any]:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=initial, desc=desc, unit="sample", file=sys.stderr, mininterval=2.0,
                   disable=not self.settings.progress, dynamic_ncols=False, ncols=100)
        try:
            yield bar
        finally:
            bar.close()


def _error_label(err: Exception) -> str:
    status = getattr(err, "status", None)
    if status:
        return f"http_{status}"
    text = str(err).lower()
    if "timed out" in text:
        return "timeout"
    if "malformed" in text:
        return "malformed"
    if isinstance(err, UnreachableError):
        return "unreachable"
    if "connection" in text:
        return "connection"
    return type(err).__name__


def default_cache_path(settings: TeacherSettings, results_dir: str | Path = "results") -> Path:
    """``teacher.cache_dir`` (or ``<results_dir>/teacher_cache``) / ``responses.sqlite``."""
    return Path(settings.cache_dir or Path(results_dir) / "teacher_cache") / "responses.sqlite"
