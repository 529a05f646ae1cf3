"""Teacher LLM providers behind one async interface.

``await provider.generate(request, params)`` returns one :class:`Completion` per requested sample index
(text, prompt/output token counts, finish reason). Providers translate their SDK's failures into three
error kinds the runner acts on: :class:`TransientError` (retry with backoff: 408/409/425/429, 5xx,
timeouts, dropped connections, malformed bodies; carries the server's Retry-After), :class:`RequestError`
(this request cannot succeed: 400, 413, 422 ...; recorded, not retried) and :class:`FatalError` (no request
can succeed: 401/403/404 — bad key, no access, unknown model; the run stops). :class:`UnreachableError` (the
endpoint refused the connection or its host name does not resolve) names the URL; the runner stops on it
unless the endpoint has answered before in the run.

- :class:`OpenAIProvider`: the official ``openai`` client (``AsyncOpenAI``); ``base_url`` points it at any
  OpenAI-compatible server (vLLM, Ollama, llama.cpp, LiteLLM). The SDK's own retries are off (the runner
  retries, honouring Retry-After, and counts every attempt).
- :class:`GeminiProvider`: the ``google-genai`` SDK (``genai.Client``; ``http_options.base_url`` for a proxy
  or a local test server). SDK retries are off likewise.
- the offline ``markers`` teacher lives in :mod:`cellduality.teacher.markers.teacher`.

API keys are passed in by the caller (read from an environment variable named in the config) and are never
part of a request's identity, a log line or an output.
"""

from __future__ import annotations

import email.utils
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

Messages = list[dict[str, str]]

TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
FATAL_STATUS = frozenset({401, 403, 404})


# ---------------------------------------------------------------- data types

@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters; they are part of the cache key (None values are left out)."""

    temperature: float = 0.7
    max_tokens: int = 2048
    top_p: float | None = None
    seed: int | None = None

    def as_key(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class TeacherRequest:
    """One prompt and the sample indices wanted for it (one completion per index)."""

    prompt_id: str
    messages: Messages
    sample_indices: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.sample_indices)


@dataclass(frozen=True)
class Completion:
    """One sampled response; token counts of a multi-sample request are apportioned over its samples."""

    text: str
    tokens_in: float
    tokens_out: float
    finish_reason: str | None = None


# ---------------------------------------------------------------- errors

class TeacherError(Exception):
    """A provider call failed; ``str()`` never contains the API key (the runner redacts it as well)."""

    kind = "error"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(" ".join(str(message).split())[:500])
        self.status = status


class TransientError(TeacherError):
    """Worth retrying after a delay (``retry_after`` seconds when the server said so)."""

    kind = "transient"

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class RequestError(TeacherError):
    """This request cannot succeed (e.g. 400 context too long); other requests may."""

    kind = "request"


class FatalError(TeacherError):
    """No request can succeed (authentication, permission, unknown model): stop the run."""

    kind = "fatal"


class UnreachableError(TransientError):
    """The endpoint cannot be reached at all (connection refused, host name not found). Fatal while the endpoint
    has not answered in this run (a wrong ``teacher.base_url``, a server that is not running); transient after
    (a server that answered and then went away may be restarting)."""

    kind = "unreachable"


def connection_error(err: BaseException, url: str) -> TransientError:
    """The error kind of a failed connection: :class:`UnreachableError` naming ``url`` and the cause when the
    connection was refused or the host name did not resolve (anywhere in the exception's chain), else a
    transient "connection error"."""
    import socket

    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    text = " ".join(str(e) for e in seen).lower()
    if any(isinstance(e, ConnectionRefusedError) for e in seen) or "connection refused" in text:
        return UnreachableError(f"cannot reach {url} (connection refused: is the server running?)")
    if any(isinstance(e, socket.gaierror) for e in seen) or any(
            phrase in text for phrase in ("name or service not known", "name resolution", "nodename nor servname",
                                          "no address associated")):
        return UnreachableError(f"cannot reach {url} (host name not found)")
    return TransientError(f"connection error ({type(err.__cause__ or err).__name__})")


def error_for_status(status: int, message: str, retry_after: float | None = None) -> TeacherError:
    """The error kind for an HTTP status."""
    text = f"HTTP {status}: {message}"
    if status in TRANSIENT_STATUS or status >= 500:
        return TransientError(text, status, retry_after)
    if status in FATAL_STATUS:
        return FatalError(text, status)
    return RequestError(text, status)


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date); None if absent."""
    if not headers:
        return None
    lower = {str(k).lower(): v for k, v in headers.items()}
    raw_ms = lower.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = lower.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def apportion(total: float, weights: Sequence[float]) -> list[float]:
    """Split a token count over samples in proportion to ``weights`` (equal shares when all are 0)."""
    if not weights:
        return []
    s = float(sum(weights))
    if s <= 0:
        return [total / len(weights)] * len(weights)
    return [total * w / s for w in weights]


def split_system(messages: Sequence[Mapping[str, str]]) -> tuple[str | None, list[Mapping[str, str]]]:
    """The joined system messages and the remaining conversation."""
    system = [m["content"] for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    return ("\n\n".join(system) if system else None), rest


# ---------------------------------------------------------------- interface

class TeacherProvider(ABC):
    """A source of completions. ``max_samples_per_request`` bounds one call's sample count."""

    name: str = "provider"
    max_samples_per_request: int = 1
    batch_capable: bool = False
    cache_responses: bool = True  # False for free, deterministic teachers (nothing to save by caching)
    endpoint: str = ""  # where requests go (named in errors); empty for offline teachers

    def __init__(self, model: str) -> None:
        self.model = model

    @abstractmethod
    async def generate(self, request: TeacherRequest, params: GenerationParams) -> list[Completion]:
        """One completion per ``request.sample_indices`` entry, in that order."""

    async def aclose(self) -> None:  # noqa: B027 (optional hook: most providers hold nothing)
        """Release network resources."""


# ---------------------------------------------------------------- OpenAI (and compatible servers)

def openai_request_body(model: str, messages: Sequence[Mapping[str, str]], n: int,
                        params: GenerationParams) -> dict[str, Any]:
    """Chat Completions request body (also one line of a Batch API input file).

    o-series / gpt-5 reasoning models take ``max_completion_tokens`` and no temperature; every other model
    (gpt-4o, and OpenAI-compatible servers) takes ``max_tokens``.
    """
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages], "n": n}
    reasoning = model.startswith(("o1", "o3", "o4", "gpt-5"))
    if reasoning:
        body["max_completion_tokens"] = params.max_tokens
    else:
        body["max_tokens"] = params.max_tokens
        body["temperature"] = params.temperature
        if params.top_p is not None:
            body["top_p"] = params.top_p
    if params.seed is not None:
        body["seed"] = params.seed
    return body


def completions_from_chat(body: Mapping[str, Any], n: int) -> list[Completion]:
    """Completions from a Chat Completions response body; :class:`TransientError` when it is malformed."""
    try:
        choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
        texts = []
        finishes = []
        for choice in choices:
            message = choice["message"]
            content = message.get("content")
            texts.append(content if isinstance(content, str) else "")
            finishes.append(choice.get("finish_reason"))
        usage = body.get("usage") or {}
        prompt_tokens = float(usage.get("prompt_tokens") or 0)
        completion_tokens = float(usage.get("completion_tokens") or 0)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise TransientError(f"malformed chat completion body ({type(err).__name__}: {err})") from None
    if len(texts) != n:
        raise TransientError(f"malformed chat completion body: {len(texts)} choices for n={n}")
    ins = apportion(prompt_tokens, [1.0] * n)
    outs = apportion(completion_tokens, [len(t) for t in texts])
    return [Completion(t, i, o, f) for t, i, o, f in zip(texts, ins, outs, finishes)]


class OpenAIProvider(TeacherProvider):
    """Chat Completions through ``openai.AsyncOpenAI`` (``base_url`` for OpenAI-compatible servers)."""

    name = "openai"
    max_samples_per_request = 8
    batch_capable = True

    def __init__(self, model: str, api_key: str | None, base_url: str | None = None, timeout_s: float = 120.0,
                 max_samples_per_request: int = 8) -> None:
        import openai

        super().__init__(model)
        self.max_samples_per_request = max_samples_per_request
        self._openai = openai
        import httpx2

        self._httpx = httpx2
        # local servers (vLLM, Ollama) accept any key; the SDK insists on one
        key = api_key or ("not-needed" if base_url else None)
        self.client = openai.AsyncOpenAI(api_key=key, base_url=base_url, timeout=timeout_s, max_retries=0)
        self.endpoint = str(self.client.base_url)

    async def generate(self, request: TeacherRequest, params: GenerationParams) -> list[Completion]:
        openai = self._openai
        body = openai_request_body(self.model, request.messages, request.n, params)
        try:
            # the client's generic POST (its documented way to call any endpoint): same auth, base URL,
            # timeouts and error types as chat.completions.create, without the per-call TypedDict transform
            # that costs ~1 ms of CPU per request at high concurrency; the body is validated below
            raw = await self.client.post("/chat/completions", body=body, cast_to=self._httpx.Response)
            data = json.loads(raw.content)
        except openai.APIStatusError as err:
            retry_after = parse_retry_after(err.response.headers)
            raise error_for_status(err.status_code, _openai_message(err), retry_after) from None
        except openai.APITimeoutError:
            raise TransientError("request timed out") from None
        except openai.APIConnectionError as err:
            raise connection_error(err, self.endpoint) from None
        except (openai.APIResponseValidationError, ValueError) as err:  # JSONDecodeError is a ValueError
            raise TransientError(f"malformed response body ({type(err).__name__})") from None
        if not isinstance(data, dict):
            raise TransientError("malformed chat completion body: not a JSON object")
        return completions_from_chat(data, request.n)

    async def aclose(self) -> None:
        await self.client.close()


def _openai_message(err: Exception) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return type(err).__name__


# ---------------------------------------------------------------- Gemini (google-genai)

def _gemini_retry_after(err: Exception) -> float | None:
    """Retry-After header, else the RetryInfo ``retryDelay`` ("2s") of a 429 body."""
    response = getattr(err, "response", None)
    delay = parse_retry_after(getattr(response, "headers", None))
    if delay is not None:
        return delay
    details = getattr(err, "details", None)
    error = details.get("error", details) if isinstance(details, dict) else None
    for item in (error or {}).get("details", []) if isinstance(error, dict) else []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            try:
                return float(str(item.get("retryDelay", "")).rstrip("s"))
            except ValueError:
                return None
    return None


class GeminiProvider(TeacherProvider):
    """``generate_content`` through the google-genai SDK's async client."""

    name = "gemini"
    max_samples_per_request = 8  # Gemini's candidate_count limit

    def __init__(self, model: str, api_key: str | None, base_url: str | None = None,
                 timeout_s: float = 120.0) -> None:
        from google import genai
        from google.genai import errors, types

        super().__init__(model)
        self.endpoint = base_url or "the Gemini API (generativelanguage.googleapis.com)"
        self._types = types
        self._errors = errors
        http_options = types.HttpOptions(base_url=base_url, timeout=int(timeout_s * 1000))
        self.client = genai.Client(api_key=api_key or ("not-needed" if base_url else None),
                                   http_options=http_options)

    def _contents(self, messages: Sequence[Mapping[str, str]]) -> tuple[str | None, list[Any]]:
        types = self._types
        system, rest = split_system(messages)
        contents = [types.Content(role="model" if m.get("role") == "assistant" else "user",
                                  parts=[types.Part(text=m["content"])]) for m in rest]
        return system, contents

    async def generate(self, request: TeacherRequest, params: GenerationParams) -> list[Completion]:
        import httpx2

        types, errors = self._types, self._errors
        system, contents = self._contents(request.messages)
        config = types.GenerateContentConfig(
            system_instruction=system, temperature=params.temperature, max_output_tokens=params.max_tokens,
            candidate_count=request.n, top_p=params.top_p, seed=params.seed,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
        try:
            response = await self.client.aio.models.generate_content(model=self.model, contents=contents,
                                                                     config=config)
        except errors.APIError as err:
            message = err.message or err.status or type(err).__name__
            raise error_for_status(int(err.code or 500), str(message), _gemini_retry_after(err)) from None
        except httpx2.TimeoutException:
            raise TransientError("request timed out") from None
        except httpx2.TransportError as err:
            raise connection_error(err, self.endpoint) from None
        except (ValueError, KeyError, TypeError) as err:  # JSON / pydantic validation of a malformed body
            raise TransientError(f"malformed response body ({type(err).__name__})") from None
        return self._completions(response, request.n)

    @staticmethod
    def _completions(response: Any, n: int) -> list[Completion]:
        candidates = list(getattr(response, "candidates", None) or [])
        if len(candidates) != n:
            raise TransientError(f"malformed generateContent body: {len(candidates)} candidates for n={n}")
        texts, finishes = [], []
        for cand in sorted(candidates, key=lambda c: c.index or 0):
            parts = (cand.content.parts if cand.content is not None else None) or []
            texts.append("".join(p.text for p in parts if p.text and not p.thought))
            finish = cand.finish_reason
            finishes.append(None if finish is None else str(getattr(finish, "value", finish)).lower())
        usage = response.usage_metadata
        prompt_tokens = float(getattr(usage, "prompt_token_count", None) or 0)
        output_tokens = float((getattr(usage, "candidates_token_count", None) or 0)
                              + (getattr(usage, "thoughts_token_count", None) or 0))
        ins = apportion(prompt_tokens, [1.0] * n)
        outs = apportion(output_tokens, [len(t) for t in texts])
        return [Completion(t, i, o, f) for t, i, o, f in zip(texts, ins, outs, finishes)]

    async def aclose(self) -> None:
        close = getattr(self.client.aio, "aclose", None)
        if close is not None:
            await close()
