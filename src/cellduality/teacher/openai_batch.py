"""OpenAI Batch API mode for large teacher runs (about half price, results within the 24 h window).

The missing requests are written as one JSONL file per batch (at most :data:`MAX_REQUESTS` lines; each line
``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``), uploaded with
``files.create(purpose="batch")`` and submitted with ``batches.create``. The batch id and the requests it
covers are recorded in the response cache *before* polling starts, so an interrupted run resumes polling
the same batch instead of submitting (and paying for) it again. ``batches.retrieve`` is polled every
``batch_poll_s`` seconds; when the batch ends, its output file is downloaded and every response is cached
per sample. Requests that errored or expired are counted as failed and are resubmitted by the next run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from cellduality.errors import CellDualityError
from cellduality.teacher.providers import (
    Completion,
    TeacherError,
    completions_from_chat,
    error_for_status,
    openai_request_body,
)


class WorkUnit(Protocol):
    """The missing samples of one prompt that go into one request (``cellduality.teacher.runner.WorkUnit``)."""

    messages: list[dict[str, str]]
    keys: tuple[str, ...]

    @property
    def n(self) -> int: ...


class TeacherRunner(Protocol):
    """What the Batch API mode needs of the runner: its provider, cache, settings and accounting, and the
    record pair ``store`` (durable, cache first) / ``record_failure``. Declared here so this module does not
    import the runner (which imports this module)."""

    provider: Any
    cache: Any
    params: Any
    settings: Any
    usage: Any

    def store(self, unit: Any, completions: Sequence[Completion], results: dict, batch: bool = False) -> None: ...

    def record_failure(self, unit: Any, err: Exception) -> None: ...

    def redacted(self, text: str) -> str: ...

    def backoff_delay(self, attempt: int, retry_after: float | None) -> float: ...


Sample = Any  # the runner's per-sample result, passed through to ``TeacherRunner.store``

log = logging.getLogger("cellduality.teacher")

MAX_REQUESTS = 50_000  # OpenAI's per-batch request limit
ENDPOINT = "/v1/chat/completions"
FINAL = ("completed", "failed", "expired", "cancelled")
INGESTED = "ingested"


def batch_line(custom_id: str, model: str, unit: WorkUnit, params: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT,
            "body": openai_request_body(model, unit.messages, unit.n, params)}


async def run_batch(runner: TeacherRunner, units: list[WorkUnit], results: dict[str, dict[int, Sample]],
                    bar: Any) -> None:
    """Complete ``units`` through the Batch API (resuming recorded batches first)."""
    provider, cache = runner.provider, runner.cache
    if cache is None:
        raise CellDualityError("teacher.batch_api needs the response cache (teacher.cache: true) to resume batches")
    client = provider.client  # type: ignore[attr-defined]
    by_id = {unit.keys[0]: unit for unit in units}
    pending: list[tuple[str, dict[str, list[str]]]] = []
    for job in cache.open_batch_jobs(provider.name, provider.model, (INGESTED,)):
        covered = {cid: keys for cid, keys in job.requests.items() if cid in by_id}
        if covered:
            log.info("teacher: resuming batch %s (%d requests, last status %s)", job.batch_id, len(covered), job.status)
            pending.append((job.batch_id, job.requests))
            for cid in covered:
                by_id.pop(cid)
    todo = list(by_id.values())
    for start in range(0, len(todo), MAX_REQUESTS):
        chunk = todo[start : start + MAX_REQUESTS]
        requests = {u.keys[0]: list(u.keys) for u in chunk}
        data = "".join(json.dumps(batch_line(u.keys[0], provider.model, u, runner.params)) + "\n" for u in chunk)
        try:
            upload = await client.files.create(file=("cellduality-teacher.jsonl", data.encode(), "application/jsonl"),
                                               purpose="batch")
            batch = await client.batches.create(input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h")
        except Exception as err:  # openai.APIStatusError and friends
            raise CellDualityError(f"teacher batch submission failed: {runner.redacted(_describe(err))}") from None
        cache.add_batch_job(batch.id, provider.name, provider.model, requests, batch.status)
        runner.usage.requests += len(chunk)
        log.info("teacher: submitted batch %s with %d requests", batch.id, len(chunk))
        pending.append((batch.id, requests))
    all_units = {u.keys[0]: u for u in units}
    deadline = time.monotonic() + runner.settings.batch_max_wait_s
    while pending:
        still = []
        for batch_id, requests in pending:
            batch = await _retrieve(client, batch_id, runner)
            cache.set_batch_status(batch_id, batch.status)
            if batch.status not in FINAL:
                still.append((batch_id, requests))
                continue
            await _ingest(runner, client, batch, requests, all_units, results, bar)
            cache.set_batch_status(batch_id, INGESTED)
        pending = still
        if pending:
            if time.monotonic() > deadline:
                ids = ", ".join(b for b, _ in pending)
                raise CellDualityError(f"teacher batch(es) {ids} still running after teacher.batch_max_wait_s; rerun "
                                       "later to resume polling (nothing is resubmitted)")
            await asyncio.sleep(runner.settings.batch_poll_s)


async def _retrieve(client: Any, batch_id: str, runner: TeacherRunner) -> Any:
    for attempt in range(runner.settings.max_retries + 1):
        try:
            return await client.batches.retrieve(batch_id)
        except Exception as err:
            if attempt == runner.settings.max_retries:
                raise CellDualityError(f"teacher: polling batch {batch_id} failed: {runner.redacted(_describe(err))}; "
                                       "rerun to resume") from None
            await asyncio.sleep(runner.backoff_delay(attempt, None))
    raise AssertionError("unreachable")  # pragma: no cover


async def _ingest(runner: TeacherRunner, client: Any, batch: Any, requests: dict[str, list[str]],
                  units: dict[str, WorkUnit], results: dict[str, dict[int, Sample]], bar: Any) -> None:
    seen: set[str] = set()
    if batch.output_file_id:
        content = await client.files.content(batch.output_file_id)
        for line in content.text.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            cid = item.get("custom_id")
            unit = units.get(cid)
            if unit is None:
                continue
            seen.add(cid)
            response = item.get("response") or {}
            status = int(response.get("status_code") or 0)
            try:
                if status != 200:
                    raise error_for_status(status or 500, json.dumps(item.get("error") or response.get("body"))[:300])
                completions = completions_from_chat(response.get("body") or {}, unit.n)
            except TeacherError as err:
                runner.record_failure(unit, err)
                continue
            runner.store(unit, completions, results, batch=True)
            bar.update(len(completions))
    for cid in requests:
        if cid in units and cid not in seen:
            runner.record_failure(units[cid], TeacherError(f"batch {batch.id} ended {batch.status} without a response"))


def _describe(err: Exception) -> str:
    status = getattr(err, "status_code", None)
    return f"HTTP {status}: {err}" if status else f"{type(err).__name__}: {err}"
