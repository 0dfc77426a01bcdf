"""A real aiohttp OpenAI-style server with known delays and scripted faults, for the bench tests.

Run as ``python fake_openai.py``: prints ``PORT <n>`` and serves on 127.0.0.1 until killed.
The scenario is chosen per request by the model name, e.g. ``fake?ttft=0.3&tpot=0.03&mode=drop&after=2``:

- ``ttft``/``tpot``: first token ``ttft`` s after the request, token i at ``ttft + i*tpot`` (absolute
  schedule, no drift); ``per_chunk`` tokens per SSE event; ``usage=0`` never reports usage;
  ``hdelay``: seconds before the response headers (TTFT still counts from the request);
  ``key=K``: 401 unless the request carries ``Authorization: Bearer K``.
- ``mode``: ``ok``, ``malformed`` (3 bad lines per request, tokens still sent), ``http500``/``http400``/
  ``http429``, ``drop`` (connection closed after ``after`` tokens), ``hang`` (headers, then nothing),
  ``noend`` (no finish_reason, no [DONE]), ``api_error`` (an error event after ``after`` tokens).
- perplexity: ``tokenize=0`` removes /tokenize, ``plp=0`` rejects prompt_logprobs (then echo works),
  ``fail_every=k`` answers 500 to every k-th completion request.
Tokens are characters: id = ord(c) % 997; logprob(id) = -((id % 13) + 1) / 4 (context-free, so any
windowing that scores each token once gives the same total).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from urllib.parse import parse_qsl

from aiohttp import web

_counter = itertools.count(1)


def token_id(ch: str) -> int:
    return ord(ch) % 997


def logprob(tok: int) -> float:
    return -((tok % 13) + 1) / 4.0


def scenario(model: str) -> dict[str, str]:
    _, _, query = model.partition("?")
    return dict(parse_qsl(query))


async def models(_request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "fake", "max_model_len": 4096}]})


async def tokenize(request: web.Request) -> web.Response:
    body = await request.json()
    if scenario(body.get("model", "")).get("tokenize") == "0":
        raise web.HTTPNotFound()
    tokens = [token_id(c) for c in body["prompt"]]
    return web.json_response({"count": len(tokens), "tokens": tokens, "max_model_len": 4096})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "BadRequestError", "code": status}},
                             status=status)


async def completions(request: web.Request) -> web.StreamResponse:
    arrived = time.monotonic()
    body = await request.json()
    sc = scenario(body.get("model", ""))
    chat = request.path.endswith("/chat/completions")
    n_request = next(_counter)
    if sc.get("key") and request.headers.get("Authorization") != f"Bearer {sc['key']}":
        return _error(401, "bad api key")
    if sc.get("fail_every") and n_request % int(sc["fail_every"]) == 0:
        return _error(500, "scripted failure")
    mode = sc.get("mode", "ok")
    if mode.startswith("http"):
        return _error(int(mode[4:]), f"scripted {mode}")
    if not body.get("stream"):
        return _scored(body, sc)

    ttft, tpot = float(sc.get("ttft", 0.0)), float(sc.get("tpot", 0.0))
    per_chunk = int(sc.get("per_chunk", 1))
    after = int(sc.get("after", 2))
    n_tokens = int(body.get("max_tokens", 16))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await asyncio.sleep(float(sc.get("hdelay", 0.0)))
    await resp.prepare(request)
    if mode == "hang":
        await asyncio.sleep(3600)
    if mode == "malformed":
        await resp.write(b"this line is not sse\n\ndata: {not json\n\n\xff\xfe\n\n")

    def event(payload: dict) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    sent = 0
    while sent < n_tokens:
        if mode == "drop" and sent >= after:
            request.transport.close()
            return resp
        if mode == "api_error" and sent >= after:
            await resp.write(event({"error": {"message": "scripted engine failure", "code": 500}}))
            return resp
        k = min(per_chunk, n_tokens - sent)
        due = arrived + ttft + (sent + k - 1) * tpot
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        sent += k
        finish = "length" if sent == n_tokens and mode != "noend" else None
        text = "x" * k
        choice = ({"index": 0, "delta": {"content": text}, "finish_reason": finish} if chat
                  else {"index": 0, "text": text, "finish_reason": finish})
        await resp.write(event({"id": "cmpl-fake", "choices": [choice]}))
    if mode == "noend":
        return resp
    if (body.get("stream_options") or {}).get("include_usage") and sc.get("usage") != "0":
        prompt = body.get("prompt") or body.get("messages")
        await resp.write(event({"id": "cmpl-fake", "choices": [],
                                "usage": {"prompt_tokens": len(prompt), "completion_tokens": n_tokens,
                                          "total_tokens": len(prompt) + n_tokens}}))
    await resp.write(b"data: [DONE]\n\n")
    return resp


def _scored(body: dict, sc: dict[str, str]) -> web.Response:
    """Non-streamed completion with prompt logprobs (vLLM style) or echo + logprobs (OpenAI style)."""
    prompt = body["prompt"]
    ids = list(prompt) if isinstance(prompt, list) else [token_id(c) for c in prompt]
    values = [None] + [logprob(t) for t in ids[1:]]
    choice: dict = {"index": 0, "text": "x", "finish_reason": "length"}
    if body.get("prompt_logprobs") is not None:
        if sc.get("plp") == "0":
            return _error(400, "Unrecognized request argument supplied: prompt_logprobs")
        choice["prompt_logprobs"] = [None] + [
            {str(t): {"logprob": logprob(t), "rank": 1, "decoded_token": "c"}, "5": {"logprob": -9.0}}
            if body["prompt_logprobs"] > 0 else {str(t): {"logprob": logprob(t), "rank": 1}}
            for t in ids[1:]]
    if body.get("echo") and body.get("logprobs") is not None:
        choice["logprobs"] = {"token_logprobs": values + [-0.5] * int(body.get("max_tokens", 1)),
                              "tokens": ["c"] * (len(ids) + int(body.get("max_tokens", 1)))}
    return web.json_response({"id": "cmpl-fake", "choices": [choice],
                              "usage": {"prompt_tokens": len(ids), "completion_tokens": 1,
                                        "total_tokens": len(ids) + 1}})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", completions)
    return app


async def _serve() -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(_serve())
    except KeyboardInterrupt:
        sys.exit(0)
