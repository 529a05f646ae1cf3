"""A small, realistic fake of the OpenAI and Gemini HTTP APIs on 127.0.0.1, for tests and benchmarks.

Serves, over HTTP/1.1 with keep-alive (asyncio, one thread or its own process):
- ``POST /v1/chat/completions`` (OpenAI Chat Completions: ``choices``, ``usage``, ``n`` samples),
- ``POST /v1beta/models/{model}:generateContent`` (Gemini: ``candidates``, ``usageMetadata``),
- the OpenAI Batch API: ``POST /v1/files`` (multipart upload), ``POST /v1/batches``,
  ``GET /v1/batches/{id}``, ``GET /v1/files/{id}/content``.

Answers are written by the offline markers teacher (so they parse and filter like a real teacher's), or by a
canned responder. Faults are injected by rules matched against the prompt text: ``429`` (with Retry-After /
retry-after-ms or Gemini RetryInfo), ``500``, ``401`` (whose message echoes the API key, worst case),
``timeout`` (the server hangs past the client's timeout), ``malformed`` (truncated JSON with status 200),
``empty`` (valid JSON without choices) and ``400`` (context too long). Every request is logged (path, prompt
hash, n, status, the API key seen) in memory and, optionally, as JSON lines in a file (for a client run in
another process).

Run standalone: ``python tests/fake_llm_server.py --latency 0.1 [--port 0] [--log requests.jsonl]``; it
prints ``PORT <n>`` once listening. Nothing here touches any address but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

Responder = Callable[[list[dict[str, str]], int, float], list[str]]
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error"}


@dataclass
class Fault:
    """Inject ``kind`` into the next ``times`` requests whose prompt text contains ``match`` ('' = any)."""

    kind: str
    match: str = ""
    times: int = 1
    retry_after: float | None = None  # seconds (Retry-After header / Gemini retryDelay)
    retry_after_ms: float | None = None


def prompt_hash(messages: list[dict[str, str]]) -> str:
    text = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def markers_responder() -> Responder:
    """Answers from the offline markers teacher, seeded by the prompt and a per-prompt call counter."""
    from cellduality.teacher.markers.teacher import MarkersTeacher

    teacher = MarkersTeacher()
    calls: dict[str, itertools.count] = {}

    def respond(messages: list[dict[str, str]], n: int, temperature: float) -> list[str]:
        key = prompt_hash(messages)
        counter = calls.setdefault(key, itertools.count())
        start = next(counter) * 1000
        return [teacher.respond(messages, f"fake-server:{key}", start + i, temperature) for i in range(n)]

    return respond


def canned_responder(messages: list[dict[str, str]], n: int, temperature: float) -> list[str]:
    return [f"<think>Fake reasoning {i}.</think>\n<answer>unknown</answer>" for i in range(n)]


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


@dataclass
class FakeLLMServer:
    """Start with ``with FakeLLMServer(...) as server:`` (background thread) or ``serve_forever()``."""

    latency_s: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    responder: Responder | None = None
    hang_s: float = 5.0
    log_path: str | Path | None = None
    batch_polls_to_complete: int = 1
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._responder = self.responder or markers_responder()
        self._lock = threading.Lock()
        self._files: dict[str, bytes] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._log = open(self.log_path, "a") if self.log_path else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeLLMServer:
        self._thread = threading.Thread(target=self._run_thread, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake LLM server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        if self._log:
            self._log.close()

    def _run_thread(self) -> None:
        asyncio.run(self.serve_forever())

    async def serve_forever(self, announce: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        if announce:
            print(f"PORT {self.port}", flush=True)
        self._ready.set()
        async with server:
            await self._stop.wait()

    # ------------------------------------------------------------ bookkeeping

    def _record(self, entry: dict[str, Any]) -> None:
        entry["time"] = time.time()
        with self._lock:
            self.requests.append(entry)
            if self._log:
                self._log.write(json.dumps(entry) + "\n")
                self._log.flush()

    def _fault_for(self, text: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.match in text:
                    fault.times -= 1
                    return fault
        return None

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    # ------------------------------------------------------------ HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, headers, body = request
                status, payload, extra = await self._route(method, path, headers, body)
                if status == 0:  # hang (timeout fault): the client gives up first
                    await asyncio.sleep(self.hang_s)
                    break
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "Content-Type: application/json",
                        f"Content-Length: {len(data)}", *[f"{k}: {v}" for k, v in extra.items()]]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # client went away, or the server is stopping
        finally:
            writer.close()

    async def _route(self, method: str, path: str, headers: dict[str, str], body: bytes):
        if method == "POST" and path == "/v1/chat/completions":
            return await self._chat(headers, json.loads(body))
        match = re.fullmatch(r"/v1(?:beta)?/models/([^:/]+):generateContent", path)
        if method == "POST" and match:
            return await self._gemini(match.group(1), headers, json.loads(body))
        if method == "POST" and path == "/v1/files":
            return self._upload(headers, body)
        if method == "POST" and path == "/v1/batches":
            return self._create_batch(json.loads(body))
        match = re.fullmatch(r"/v1/batches/([\w-]+)", path)
        if method == "GET" and match:
            return self._get_batch(match.group(1))
        match = re.fullmatch(r"/v1/files/([\w-]+)/content", path)
        if method == "GET" and match:
            data = self._files.get(match.group(1))
            return (200, data, {}) if data is not None else (404, {"error": {"message": "no such file"}}, {})
        return 404, {"error": {"message": f"unknown endpoint {method} {path}"}}, {}

    # ------------------------------------------------------------ OpenAI chat

    def _chat_body(self, request: dict[str, Any]) -> dict[str, Any]:
        messages = request["messages"]
        n = int(request.get("n", 1))
        texts = self._responder(messages, n, float(request.get("temperature", 1.0)))
        prompt_tokens = _tokens("".join(m["content"] for m in messages))
        completion_tokens = sum(_tokens(t) for t in texts)
        return {
            "id": self._new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
            "model": request["model"], "system_fingerprint": "fp_fake",
            "choices": [{"index": i, "message": {"role": "assistant", "content": t, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"} for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    async def _chat(self, headers: dict[str, str], request: dict[str, Any]):
        messages = request["messages"]
        key = headers.get("authorization", "").removeprefix("Bearer ")
        fault = self._fault_for(json.dumps(messages))
        await asyncio.sleep(self.latency_s)
        entry = {"api": "openai", "prompt_hash": prompt_hash(messages), "n": int(request.get("n", 1)),
                 "api_key": key, "fault": fault.kind if fault else None}
        status, payload, extra = self._openai_fault(fault, key) if fault else (200, None, {})
        if payload is None and status == 200:
            payload = self._chat_body(request)
            extra = {"x-request-id": self._new_id("req_"), "openai-processing-ms": str(int(self.latency_s * 1000))}
        self._record({**entry, "status": status})
        return status, payload, extra

    def _openai_fault(self, fault: Fault, key: str):
        kind = fault.kind
        if kind == "429":
            extra = {}
            if fault.retry_after is not None:
                extra["retry-after"] = str(fault.retry_after)
            if fault.retry_after_ms is not None:
                extra["retry-after-ms"] = str(fault.retry_after_ms)
            return 429, {"error": {"message": "Rate limit reached for requests", "type": "requests",
                                   "param": None, "code": "rate_limit_exceeded"}}, extra
        if kind == "500":
            return 500, {"error": {"message": "The server had an error while processing your request.",
                                   "type": "server_error", "param": None, "code": None}}, {}
        if kind == "401":
            return 401, {"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error",
                                   "param": None, "code": "invalid_api_key"}}, {}
        if kind == "400":
            return 400, {"error": {"message": "This model's maximum context length is 128000 tokens.",
                                   "type": "invalid_request_error", "param": "messages",
                                   "code": "context_length_exceeded"}}, {}
        if kind == "timeout":
            return 0, None, {}
        if kind == "malformed":
            return 200, b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"index": 0, "mess', {}
        if kind == "empty":
            return 200, {"id": "chatcmpl-x", "object": "chat.completion", "model": "x"}, {}
        raise ValueError(f"unknown fault kind {kind!r}")

    # ------------------------------------------------------------ Gemini

    async def _gemini(self, model: str, headers: dict[str, str], request: dict[str, Any]):
        system = request.get("systemInstruction") or request.get("system_instruction")
        messages = []
        if system:
            messages.append({"role": "system", "content": "".join(p.get("text", "") for p in system["parts"])})
        for content in request.get("contents", []):
            role = "assistant" if content.get("role") == "model" else "user"
            messages.append({"role": role, "content": "".join(p.get("text", "") for p in content["parts"])})
        config = request.get("generationConfig") or request.get("generation_config") or {}
        n = int(config.get("candidateCount", config.get("candidate_count", 1)))
        key = headers.get("x-goog-api-key", "")
        fault = self._fault_for(json.dumps(messages))
        await asyncio.sleep(self.latency_s)
        entry = {"api": "gemini", "prompt_hash": prompt_hash(messages), "n": n, "api_key": key,
                 "fault": fault.kind if fault else None}
        if fault:
            status, payload, extra = self._gemini_fault(fault, key)
        else:
            texts = self._responder(messages, n, float(config.get("temperature", 1.0)))
            prompt_tokens = _tokens("".join(m["content"] for m in messages))
            out_tokens = sum(_tokens(t) for t in texts)
            status, extra = 200, {}
            payload = {
                "candidates": [{"content": {"parts": [{"text": t}], "role": "model"}, "finishReason": "STOP",
                                "index": i} for i, t in enumerate(texts)],
                "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens,
                                  "totalTokenCount": prompt_tokens + out_tokens},
                "modelVersion": model, "responseId": self._new_id("resp-"),
            }
        self._record({**entry, "status": status})
        return status, payload, extra

    def _gemini_fault(self, fault: Fault, key: str):
        kind = fault.kind
        if kind == "429":
            details = []
            if fault.retry_after is not None:
                details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                "retryDelay": f"{fault.retry_after}s"})
            return 429, {"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                                   "status": "RESOURCE_EXHAUSTED", "details": details}}, {}
        if kind == "500":
            return 500, {"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}, {}
        if kind == "401":
            return 401, {"error": {"code": 401, "message": f"API key not valid: {key}",
                                   "status": "UNAUTHENTICATED"}}, {}
        if kind == "400":
            return 400, {"error": {"code": 400, "message": "The input token count exceeds the maximum.",
                                   "status": "INVALID_ARGUMENT"}}, {}
        if kind == "timeout":
            return 0, None, {}
        if kind == "malformed":
            return 200, b'{"candidates": [{"content": {"parts": [{"text": "<think>trunc', {}
        if kind == "empty":
            return 200, {"usageMetadata": {"promptTokenCount": 1}}, {}
        raise ValueError(f"unknown fault kind {kind!r}")

    # ------------------------------------------------------------ Batch API

    def _upload(self, headers: dict[str, str], body: bytes):
        match = re.search(r'boundary="?([^";]+)"?', headers.get("content-type", ""))
        if not match:
            return 400, {"error": {"message": "expected multipart/form-data"}}, {}
        content, filename = None, "upload.jsonl"
        for part in body.split(b"--" + match.group(1).encode()):
            head, _, data = part.partition(b"\r\n\r\n")
            if b'name="file"' in head:
                content = data.rsplit(b"\r\n", 1)[0]
                name = re.search(rb'filename="([^"]*)"', head)
                filename = name.group(1).decode() if name else filename
        if content is None:
            return 400, {"error": {"message": "no file part"}}, {}
        file_id = self._new_id("file-")
        self._files[file_id] = content
        self._record({"api": "openai-files", "status": 200, "bytes": len(content)})
        return 200, {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                     "filename": filename, "purpose": "batch", "status": "processed"}, {}

    def _create_batch(self, request: dict[str, Any]):
        lines = self._files.get(request["input_file_id"], b"").decode().splitlines()
        batch_id = self._new_id("batch_")
        self._batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": request["endpoint"], "errors": None,
            "input_file_id": request["input_file_id"], "completion_window": request["completion_window"],
            "status": "validating", "output_file_id": None, "error_file_id": None,
            "created_at": int(time.time()), "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": request.get("metadata"), "_polls": 0,
        }
        self._record({"api": "openai-batches", "status": 200, "requests": len(lines)})
        return 200, self._public(self._batches[batch_id]), {}

    def _get_batch(self, batch_id: str):
        batch = self._batches.get(batch_id)
        if batch is None:
            return 404, {"error": {"message": "no such batch"}}, {}
        batch["_polls"] += 1
        if batch["status"] != "completed":
            batch["status"] = "in_progress"
            if batch["_polls"] >= self.batch_polls_to_complete:
                self._complete_batch(batch)
        return 200, self._public(batch), {}

    def _complete_batch(self, batch: dict[str, Any]) -> None:
        out, errors = [], []
        for line in self._files[batch["input_file_id"]].decode().splitlines():
            item = json.loads(line)
            body = self._chat_body(item["body"])
            self._record({"api": "openai-batch-request", "status": 200, "custom_id": item["custom_id"],
                          "prompt_hash": prompt_hash(item["body"]["messages"]), "n": item["body"].get("n", 1)})
            out.append({"id": self._new_id("batch_req_"), "custom_id": item["custom_id"],
                        "response": {"status_code": 200, "request_id": self._new_id("req_"), "body": body},
                        "error": None})
        file_id = self._new_id("file-")
        self._files[file_id] = "".join(json.dumps(o) + "\n" for o in out).encode()
        batch.update(status="completed", output_file_id=file_id,
                     request_counts={"total": len(out), "completed": len(out), "failed": len(errors)})

    @staticmethod
    def _public(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}


async def _read_request(reader: asyncio.StreamReader):
    line = await reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
    else:
        body = await reader.readexactly(int(headers.get("content-length", 0)))
    return method, path.split("?", 1)[0], headers, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every response")
    parser.add_argument("--log", default=None, help="append one JSON line per request to this file")
    parser.add_argument("--canned", action="store_true", help="canned answers instead of the markers teacher")
    args = parser.parse_args()
    server = FakeLLMServer(latency_s=args.latency, log_path=args.log, port=args.port,
                           responder=canned_responder if args.canned else None)
    asyncio.run(server.serve_forever(announce=True))


if __name__ == "__main__":
    main()
