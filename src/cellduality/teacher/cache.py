"""On-disk cache of teacher responses, so an interrupted run never pays for a response twice.

One SQLite database (WAL journal) holds one row per sample, keyed by SHA-256 of
``(provider, model, generation params, prompt messages, sample index)`` — never the API key, base URL or
operational settings (concurrency, retries, timeouts), which do not change what a model answers. Each
response is committed the moment it arrives; in WAL mode a committed row survives the writing process being
killed (``sync="full"`` also fsyncs every commit, surviving power loss). Several processes (parallel
Snakemake jobs) may share one database: SQLite serialises the writers.

The cache lives outside Snakemake's declared outputs (default ``<results_dir>/teacher_cache/``), so
Snakemake never deletes it when a job fails. Pending OpenAI Batch API jobs are recorded in the same file so
a resumed run polls them instead of submitting (and paying for) them again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellduality.teacher.providers import Completion

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    text TEXT NOT NULL,
    tokens_in REAL NOT NULL,
    tokens_out REAL NOT NULL,
    finish_reason TEXT,
    batch INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_jobs (
    batch_id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    requests TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL
);
"""
SYNC_MODES = ("normal", "full")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def prompt_hash(messages: Sequence[Mapping[str, str]]) -> str:
    """SHA-256 of the chat messages (canonical JSON)."""
    return hashlib.sha256(_canonical(list(messages)).encode("utf-8")).hexdigest()


def cache_key(provider: str, model: str, params: Mapping[str, Any], messages: Sequence[Mapping[str, str]],
              sample_index: int) -> str:
    """The cache key of one sample: SHA-256 over provider, model, params, prompt and sample index only."""
    payload = {"provider": provider, "model": model, "params": dict(params), "prompt": prompt_hash(messages),
               "sample_index": int(sample_index)}
    return hashlib.sha256(_canonical(payload).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedResponse(Completion):
    """One stored sample: a provider's :class:`Completion` and whether it came through the Batch API."""

    batch: bool = False


@dataclass(frozen=True)
class BatchJob:
    """A submitted Batch API job: id, status and the request groups it covers (custom_id -> cache keys)."""

    batch_id: str
    status: str
    requests: dict[str, list[str]]


class ResponseCache:
    """SQLite response store; use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path, sync: str = "normal", timeout_s: float = 60.0) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"cache sync mode must be one of {', '.join(SYNC_MODES)}; got {sync!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={sync.upper()}")
        self._db.executescript(SCHEMA)

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------ responses

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedResponse]:
        """Stored responses for those of ``keys`` that are cached."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, CachedResponse] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = self._db.execute(
                f"SELECT key, text, tokens_in, tokens_out, finish_reason, batch FROM responses "
                f"WHERE key IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for key, text, t_in, t_out, finish, batch in rows:
                found[key] = CachedResponse(text, t_in, t_out, finish, bool(batch))
        return found

    def put_many(self, rows: Sequence[tuple[str, str, str, str, int, CachedResponse]]) -> None:
        """Store ``(key, provider, model, prompt_hash, sample_index, response)`` rows in one transaction."""
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(key, provider, model, phash, int(index), r.text, float(r.tokens_in), float(r.tokens_out),
                  r.finish_reason, int(r.batch), now) for key, provider, model, phash, index, r in rows],
            )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    # ------------------------------------------------------------ batch jobs

    def add_batch_job(self, batch_id: str, provider: str, model: str, requests: Mapping[str, list[str]],
                      status: str) -> None:
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO batch_jobs VALUES (?, ?, ?, ?, ?, ?)",
                             (batch_id, provider, model, json.dumps(dict(requests)), status, time.time()))

    def set_batch_status(self, batch_id: str, status: str) -> None:
        with self._transaction():
            self._db.execute("UPDATE batch_jobs SET status = ? WHERE batch_id = ?", (status, batch_id))

    def open_batch_jobs(self, provider: str, model: str, done: Iterable[str]) -> list[BatchJob]:
        """Jobs of this provider/model whose status is not in ``done`` (oldest first)."""
        done = list(done)
        rows = self._db.execute(
            f"SELECT batch_id, status, requests FROM batch_jobs WHERE provider = ? AND model = ? "
            f"AND status NOT IN ({','.join('?' * len(done))}) ORDER BY created",
            (provider, model, *done),
        )
        return [BatchJob(bid, status, json.loads(requests)) for bid, status, requests in rows]

    # ------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
