"""Where token ids come from: the server's ``/tokenize`` (vLLM), a local HF tokenizer, or nowhere.

Token ids let the load generator send prompts of exact length and let perplexity cut exact token
windows; without them both fall back to text and take the token counts the server reports.
"""

from __future__ import annotations

from typing import Protocol

import aiohttp

from .client import Endpoint, RequestFailed, classify, post_json


class Tokenizer(Protocol):
    name: str

    async def encode(self, text: str) -> list[int]: ...


class _Memo:
    """Remembers the last long text: every sweep point draws prompts from the same corpus."""

    _memo: tuple[str, list[int]] | None = None

    async def encode(self, text: str) -> list[int]:
        if self._memo is not None and self._memo[0] == text:
            return list(self._memo[1])
        ids = await self._encode(text)
        if len(text) > 10_000:
            self._memo = (text, ids)
        return list(ids)


class ServerTokenizer(_Memo):
    """vLLM's ``POST /tokenize``; no special tokens, so windows are raw text tokens."""

    name = "server"

    def __init__(self, session: aiohttp.ClientSession, endpoint: Endpoint, timeout: float = 120.0) -> None:
        self.session, self.endpoint, self.timeout = session, endpoint, timeout

    async def _encode(self, text: str) -> list[int]:
        answer = await post_json(self.session, self.endpoint, "/tokenize",
                                 {"model": self.endpoint.model, "prompt": text, "add_special_tokens": False},
                                 self.timeout)
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise RequestFailed("bad_tokenize", f"{self.endpoint.url('/tokenize')} answered without 'tokens'")
        return tokens


class LocalTokenizer(_Memo):
    """A HF tokenizer directory or name (loaded lazily: transformers is slow to import)."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.name = path
        try:
            self._tok = AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001 - one line naming the path is the useful part
            raise ValueError(f"--tokenizer {path}: cannot load a tokenizer ({type(exc).__name__}: {exc})") from None

    async def _encode(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False)["input_ids"])


async def resolve_tokenizer(spec: str, session: aiohttp.ClientSession, endpoint: Endpoint) -> Tokenizer | None:
    """``auto`` (server if it answers ``/tokenize``, else none), ``server``, ``none`` or a local path."""
    if spec == "none":
        return None
    if spec in ("auto", "server"):
        tok = ServerTokenizer(session, endpoint, timeout=30.0)
        try:
            await tok.encode("probe")
        except Exception as exc:  # noqa: BLE001
            if spec == "server":
                kind, detail = classify(exc)
                raise RequestFailed(kind, f"--tokenizer server: {endpoint.url('/tokenize')}: {detail}") from None
            return None
        tok.timeout = 120.0
        return tok
    return LocalTokenizer(spec)
