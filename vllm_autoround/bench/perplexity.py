"""Perplexity over an OpenAI-compatible endpoint from the logprobs it reports for prompt tokens.

Token windows (when a tokenizer is available) follow the usual sliding-window recipe: windows of
``window`` tokens starting every ``stride`` tokens, each scoring only the tokens that the previous
window did not, so every token but the first of the text is scored once (with ``stride == window``
the first token of each window has no context and is not scored). Without a tokenizer the text is cut
into windows of about ``window`` characters and the server's own token counts are used.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from tqdm import tqdm

from .client import Endpoint, RequestFailed, classify, post_json
from .load import Budget, run_bounded
from .prompts import corpus_text
from .schema import PerplexityResult, PerplexityWindow
from .tokenizing import Tokenizer

APIS = ("auto", "prompt_logprobs", "echo")


@dataclass
class WindowSpec:
    index: int
    first_token: int | None
    score_from: int  # position inside the window of the first scored token (>= 1)
    token_ids: list[int] | None = None
    text: str | None = None


def token_windows(n_tokens: int, window: int, stride: int, max_windows: int | None = None
                  ) -> list[tuple[int, int, int]]:
    """(begin, end, score_from) of each window over a stream of ``n_tokens`` tokens."""
    if window < 2 or not 1 <= stride <= window:
        raise ValueError(f"perplexity windows need window >= 2 and 1 <= stride <= window (got {window}, {stride})")
    spans: list[tuple[int, int, int]] = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        score_from = max(1, (end - begin) - (end - prev_end))
        if score_from < end - begin:
            spans.append((begin, end, score_from))
        prev_end = end
        if end == n_tokens or (max_windows and len(spans) >= max_windows):
            break
    return spans


def text_windows(text: str, chars: int, max_windows: int | None = None) -> list[str]:
    """Pieces of about ``chars`` characters, cut after whitespace so words stay whole."""
    pieces, pos = [], 0
    while pos < len(text) and not (max_windows and len(pieces) >= max_windows):
        end = min(pos + chars, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", pos + chars // 2, end), text.rfind("\n", pos + chars // 2, end))
            end = cut + 1 if cut > pos else end
        piece = text[pos:end]
        if piece.strip():
            pieces.append(piece)
        pos = end
    return pieces


BUILTIN_TEXTS = ("builtin", "heldout")


def read_text(path: str) -> str:
    """A UTF-8 text file; ``builtin``: the CPython docs prose; ``heldout``: the held-out genre of the Brown
    corpus that ships with the quantizer (press reportage, which its default calibration never sees)."""
    if path == "builtin":
        return corpus_text()
    if path == "heldout":
        from vllm_autoround.quantize.corpus import brown_documents

        return "\n\n".join(brown_documents("heldout"))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the perplexity text ({exc})") from None
    if not text.strip():
        raise ValueError(f"{path}: the perplexity text is empty")
    return text


async def _tokenize_for(tokenizer: Tokenizer, text: str, need_tokens: int | None) -> list[int]:
    """Token ids of the text, or of a generous prefix when only ``need_tokens`` are used; a prefix
    far longer than needed tokenizes its start exactly like the whole text does."""
    if need_tokens:
        prefix_chars = need_tokens * 16
        if prefix_chars < len(text):
            ids = await tokenizer.encode(text[:prefix_chars])
            if len(ids) > need_tokens + 64:
                return ids
    return await tokenizer.encode(text)


def _logprobs_from_answer(answer: dict, api: str, spec: WindowSpec) -> tuple[list[float | None], int | None]:
    """Per-position prompt logprobs (None for the first) and the prompt token count the server reported."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise RequestFailed("bad_answer", "no choices in the answer")
    usage = answer.get("usage") or {}
    reported = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else None
    choice = choices[0]
    if api == "prompt_logprobs":
        entries = choice.get("prompt_logprobs")
        if not isinstance(entries, list):
            raise RequestFailed("no_prompt_logprobs", "the answer has no prompt_logprobs")
        values: list[float | None] = []
        for pos, entry in enumerate(entries):
            if entry is None:
                values.append(None)
                continue
            if spec.token_ids is not None:
                item = entry.get(str(spec.token_ids[pos])) if pos < len(spec.token_ids) else None
            else:
                item = next(iter(entry.values())) if len(entry) == 1 else None
            if not isinstance(item, dict) or not isinstance(item.get("logprob"), (int, float)):
                raise RequestFailed("missing_logprob", f"no logprob for the prompt token at position {pos}")
            values.append(float(item["logprob"]))
        return values, reported
    logprobs = choice.get("logprobs")
    token_logprobs = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
    if not isinstance(token_logprobs, list):
        raise RequestFailed("no_echo_logprobs", "the echo answer has no logprobs.token_logprobs")
    n_prompt = reported if reported is not None else (len(spec.token_ids) if spec.token_ids else None)
    if n_prompt is None:
        raise RequestFailed("no_usage", "echo answer without usage.prompt_tokens: cannot tell prompt from output")
    return [None if v is None else float(v) for v in token_logprobs[:n_prompt]], reported


def _body(model: str, spec: WindowSpec, api: str) -> dict:
    body = {"model": model, "prompt": spec.token_ids if spec.token_ids is not None else spec.text,
            "max_tokens": 1, "temperature": 0.0}
    if api == "prompt_logprobs":
        body["prompt_logprobs"] = 0
    else:
        body.update(echo=True, logprobs=0)
    return body


async def score_window(session: aiohttp.ClientSession, endpoint: Endpoint, spec: WindowSpec, api: str,
                       timeout: float) -> PerplexityWindow:
    out = PerplexityWindow(index=spec.index, first_token=spec.first_token,
                           tokens_sent=len(spec.token_ids) if spec.token_ids is not None else None,
                           prompt_tokens_reported=None)
    try:
        answer = await post_json(session, endpoint, "/v1/completions", _body(endpoint.model, spec, api), timeout)
        values, out.prompt_tokens_reported = _logprobs_from_answer(answer, api, spec)
        expected = out.tokens_sent if out.tokens_sent is not None else out.prompt_tokens_reported
        if expected is None or len(values) != expected or (
                out.prompt_tokens_reported is not None and out.prompt_tokens_reported != expected):
            raise RequestFailed("token_count_mismatch",
                                f"sent {out.tokens_sent} tokens, server reported {out.prompt_tokens_reported}, "
                                f"got {len(values)} logprobs")
        scored = values[spec.score_from:]
        if any(v is None or not math.isfinite(v) for v in scored):
            raise RequestFailed("missing_logprob", "a scored position has no finite logprob")
        out.scored_tokens = len(scored)
        out.nll = -math.fsum(scored)
    except Exception as exc:  # noqa: BLE001 - a failed window is counted, the others still score
        out.error, out.error_detail = classify(exc)
    return out


async def measure_perplexity(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    text_path: str,
    *,
    tokenizer: Tokenizer | None,
    window: int,
    stride: int | None = None,
    max_windows: int | None = None,
    api: str = "auto",
    concurrency: int = 4,
    request_timeout: float = 120.0,
    budget: Budget | None = None,
    progress: bool = True,
) -> PerplexityResult:
    if api not in APIS:
        raise ValueError(f"--ppl-api {api!r}: choose one of {APIS}")
    budget = budget or Budget()
    text = read_text(text_path)
    stride = stride or window
    specs: list[WindowSpec] = []
    total_tokens = 0
    if tokenizer is not None:
        spans = token_windows(10**12, window, stride, max_windows) if max_windows else None
        ids = await _tokenize_for(tokenizer, text, spans[-1][1] if spans else None)
        total_tokens = len(ids)
        for i, (begin, end, score_from) in enumerate(token_windows(len(ids), window, stride, max_windows)):
            specs.append(WindowSpec(i, begin, score_from, token_ids=ids[begin:end]))
    else:
        for i, piece in enumerate(text_windows(text, window, max_windows)):
            specs.append(WindowSpec(i, None, 1, text=piece))
    if not specs:
        raise ValueError(f"{text_path}: too short for one perplexity window")

    if api == "auto":  # vLLM's prompt_logprobs, else the OpenAI echo convention
        first = await score_window(session, endpoint, specs[0], "prompt_logprobs", request_timeout)
        api = "prompt_logprobs"
        if first.error and (first.error.startswith("http_4") or first.error in ("no_prompt_logprobs",
                                                                                "missing_logprob")):
            api = "echo"
            first = await score_window(session, endpoint, specs[0], api, request_timeout)
        done = {0: first}
    else:
        done = {}

    limit = asyncio.Semaphore(max(1, concurrency))
    bar = tqdm(total=len(specs), initial=len(done), desc="perplexity", disable=None if progress else True,
               file=sys.stderr, dynamic_ncols=True, leave=False)  # None: no bar when stderr is not a terminal

    async def one(spec: WindowSpec) -> None:
        async with limit:
            done[spec.index] = await score_window(session, endpoint, spec, api, request_timeout)
            bar.update(1)

    work = asyncio.gather(*(one(s) for s in specs if s.index not in done))
    if not await run_bounded(work, budget):
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
    bar.close()

    windows = []
    for spec in specs:
        win = done.get(spec.index)
        if win is None:
            win = PerplexityWindow(index=spec.index, first_token=spec.first_token,
                                   tokens_sent=len(spec.token_ids) if spec.token_ids is not None else None,
                                   prompt_tokens_reported=None, error="deadline",
                                   error_detail="not scored before the global deadline or a stop signal")
        windows.append(win)
    good = [w for w in windows if w.error is None]
    scored = sum(w.scored_tokens for w in good)
    nll = math.fsum(w.nll for w in good)
    return PerplexityResult(
        text_path=text_path, text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        tokenizer=tokenizer.name if tokenizer is not None else "none", api=api, window=window,
        stride=stride if tokenizer is not None else window, windows=windows, total_tokens=total_tokens,
        scored_tokens=scored, nll=nll, perplexity=math.exp(nll / scored) if scored else None,
        errors=dict(sorted(Counter(w.error for w in windows if w.error).items())),
        complete=len(good) == len(windows),
    )
