"""HTTP side of the benchmark: one OpenAI-compatible endpoint, JSON calls and one streamed request.

Every failure becomes an error *kind* (``timeout``, ``connect``, ``disconnected``, ``http_500``,
``api_error``, ``incomplete_stream``, ...) on the request's record, never an exception out of the
load generator, so that a failing server yields a report instead of a traceback.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from .schema import RequestRecord
from .sse import SSEParser


@dataclass
class Endpoint:
    """An OpenAI-compatible server; ``base_url`` may end in ``/v1`` or not."""

    base_url: str
    model: str | None = None
    api_key: str | None = field(default_factory=lambda: os.environ.get("OPENAI_API_KEY"))

    def __post_init__(self) -> None:
        url = self.base_url.rstrip("/")
        self.base_url = url[: -len("/v1")] if url.endswith("/v1") else url

    def url(self, path: str) -> str:
        return self.base_url + path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


class RequestFailed(Exception):
    """A call that did not give a usable answer; ``kind`` is the error kind reported."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


def new_session(connect_timeout: float = 10.0) -> aiohttp.ClientSession:
    """A session without aiohttp's 100-connection cap; total time is bounded by the callers."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
    )


def classify(exc: BaseException) -> tuple[str, str]:
    """Error kind and a one-line detail for an exception raised while talking to the server."""
    if isinstance(exc, RequestFailed):
        return exc.kind, exc.detail
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", "no complete answer within the request timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect", str(exc)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError,
                        ConnectionError)):
        return "disconnected", f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"http_{exc.status}", exc.message
    return f"client_{type(exc).__name__}", str(exc)[:300]


async def _error_detail(resp: aiohttp.ClientResponse) -> str:
    try:
        raw = await asyncio.wait_for(resp.content.read(4096), 5.0)
    except Exception:  # noqa: BLE001 - the status is the error; the body is only a hint
        return ""
    try:
        message = msgspec.json.decode(raw).get("error", {}).get("message")
        if message:
            return str(message)[:300]
    except (msgspec.DecodeError, AttributeError):
        pass
    return raw.decode("utf-8", "replace")[:300]


async def get_json(session: aiohttp.ClientSession, endpoint: Endpoint, path: str, timeout: float) -> Any:
    async def call() -> Any:
        async with session.get(endpoint.url(path), headers=endpoint.headers()) as resp:
            if resp.status != 200:
                raise RequestFailed(f"http_{resp.status}", await _error_detail(resp))
            return msgspec.json.decode(await resp.read())

    return await asyncio.wait_for(call(), timeout)


async def post_json(session: aiohttp.ClientSession, endpoint: Endpoint, path: str, body: dict,
                    timeout: float) -> Any:
    """POST a JSON body, return the decoded JSON answer; raise RequestFailed / aiohttp errors."""

    async def call() -> Any:
        async with session.post(endpoint.url(path), json=body, headers=endpoint.headers()) as resp:
            if resp.status != 200:
                raise RequestFailed(f"http_{resp.status}", await _error_detail(resp))
            raw = await resp.read()
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise RequestFailed("bad_json", raw[:200].decode("utf-8", "replace")) from None

    return await asyncio.wait_for(call(), timeout)


async def discover_model(session: aiohttp.ClientSession, endpoint: Endpoint, timeout: float = 30.0) -> dict:
    """The first (or the named) entry of ``/v1/models``; fills ``endpoint.model`` when it was not given."""
    try:
        listing = await get_json(session, endpoint, "/v1/models", timeout)
        models = listing.get("data") or []
    except Exception as exc:  # noqa: BLE001
        kind, detail = classify(exc)
        if endpoint.model:
            return {"id": endpoint.model}
        raise RequestFailed(kind, f"{endpoint.url('/v1/models')}: {detail}; pass --model") from None
    if endpoint.model is None:
        if not models:
            raise RequestFailed("no_model", f"{endpoint.url('/v1/models')} lists no model; pass --model")
        endpoint.model = models[0]["id"]
    return next((m for m in models if m.get("id") == endpoint.model), {"id": endpoint.model})


@dataclass
class Prompt:
    """What one request sends: text, or token ids (exact length), with its output length."""

    output_len: int
    text: str | None = None
    token_ids: list[int] | None = None
    input_len: int | None = None  # tokens if token_ids, else None


@dataclass
class RequestOptions:
    endpoint_kind: str = "completions"  # or "chat"
    temperature: float = 0.0
    ignore_eos: bool = True
    extra_body: dict = field(default_factory=dict)


def request_body(model: str, prompt: Prompt, options: RequestOptions) -> tuple[str, dict]:
    body: dict[str, Any] = {
        "model": model, "max_tokens": prompt.output_len, "temperature": options.temperature,
        "stream": True, "stream_options": {"include_usage": True},
    }
    if options.ignore_eos:
        body["ignore_eos"] = True
    if options.endpoint_kind == "chat":
        text = prompt.text if prompt.text is not None else ""
        body["messages"] = [{"role": "user", "content": text}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = prompt.token_ids if prompt.token_ids is not None else prompt.text
        path = "/v1/completions"
    body.update(options.extra_body)
    return path, body


def _chunk_text(choice: dict) -> str:
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    return (delta.get("content") or "") + (delta.get("reasoning_content") or delta.get("reasoning") or "")


async def stream_request(session: aiohttp.ClientSession, endpoint: Endpoint, prompt: Prompt,
                         options: RequestOptions, rec: RequestRecord, run_start: float) -> None:
    """Send one streamed request, filling ``rec`` as chunks arrive (so a cancelled request keeps its
    partial timings). Network exceptions propagate; the caller classifies them."""
    path, body = request_body(endpoint.model, prompt, options)
    start = time.perf_counter()
    rec.start = start - run_start
    rec.prompt_tokens = prompt.input_len
    async with session.post(endpoint.url(path), json=body, headers=endpoint.headers()) as resp:
        if resp.status != 200:
            rec.error, rec.error_detail = f"http_{resp.status}", await _error_detail(resp)
            rec.e2e = time.perf_counter() - start
            return
        parser = SSEParser()
        state = _StreamState(start)
        async for chunk in resp.content.iter_any():
            now = time.perf_counter()
            for data in parser.feed(chunk):
                state.handle(data, now, rec)
            rec.malformed_lines = parser.malformed_lines + state.bad_payloads
            if state.done or rec.error:
                break
        else:
            for data in parser.close():
                state.handle(data, time.perf_counter(), rec)
    end = time.perf_counter()
    rec.e2e = end - start
    rec.malformed_lines = parser.malformed_lines + state.bad_payloads
    if rec.error:
        return
    if not (state.done or state.finished):
        rec.error, rec.error_detail = "incomplete_stream", "stream ended without [DONE] or finish_reason"
        return
    if state.chunk_tokens == 0:
        rec.error = "malformed_sse" if rec.malformed_lines else "empty_output"
        rec.error_detail = "no token arrived"
        return
    if state.usage_output is not None:
        rec.output_tokens, rec.output_tokens_source = state.usage_output, "usage"
    rec.ok = True


class _StreamState:
    def __init__(self, start: float) -> None:
        self.start = start
        self.last_token: float | None = None
        self.chunk_tokens = 0
        self.bad_payloads = 0
        self.usage_output: int | None = None
        self.done = False
        self.finished = False

    def handle(self, data: str, now: float, rec: RequestRecord) -> None:
        if data.strip() == "[DONE]":
            self.done = True
            return
        try:
            obj = msgspec.json.decode(data)
            if not isinstance(obj, dict):
                raise TypeError
        except (msgspec.DecodeError, TypeError):
            self.bad_payloads += 1
            return
        if obj.get("error"):
            error = obj["error"]
            rec.error = "api_error"
            rec.error_detail = str(error.get("message", error) if isinstance(error, dict) else error)[:300]
            return
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("completion_tokens"), int):
                self.usage_output = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                rec.prompt_tokens = usage["prompt_tokens"]
        for choice in obj.get("choices") or []:
            if not isinstance(choice, dict):
                self.bad_payloads += 1
                continue
            if _chunk_text(choice):
                if self.last_token is None:
                    rec.ttft = now - self.start
                else:
                    rec.itl.append(now - self.last_token)
                self.last_token = now
                self.chunk_tokens += 1
                rec.output_tokens = self.chunk_tokens
            if choice.get("finish_reason"):
                self.finished = True
