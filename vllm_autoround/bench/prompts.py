"""Prompts for the load generator: synthetic slices of built-in prose, or a user's text/jsonl file.

Synthetic prompts are token-id slices of exactly the drawn length when a tokenizer is available and
the endpoint is ``completions``; otherwise they are that many words of text (the server reports
the real token count).
"""

from __future__ import annotations

import random
from pathlib import Path

import msgspec

from .client import Prompt
from .lengths import LengthSpec
from .tokenizing import Tokenizer

_CORPUS_CHARS = 400_000


def corpus_text() -> str:
    """English prose shipped with every CPython (the pydoc topics), so no download is needed."""
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[key] for key in sorted(topics.topics))


def read_prompt_file(path: str | Path) -> list[dict]:
    """``.jsonl``: one object per line with ``prompt`` (text or token ids) or ``text``, optional
    ``output_len``/``max_tokens``. Any other file: paragraphs separated by blank lines."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read prompts ({exc})") from None
    entries: list[dict] = []
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON ({exc})") from None
            prompt = obj.get("prompt", obj.get("text")) if isinstance(obj, dict) else None
            is_ids = isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)
            if not (isinstance(prompt, str) and prompt) and not is_ids:
                raise ValueError(f"{path}:{lineno}: needs a non-empty 'prompt' (text or token ids) or 'text'")
            out_len = obj.get("output_len", obj.get("max_tokens"))
            if out_len is not None and not (isinstance(out_len, int) and out_len >= 1):
                raise ValueError(f"{path}:{lineno}: 'output_len' must be a positive integer")
            entries.append({"prompt": prompt, "output_len": out_len})
    else:
        entries = [{"prompt": p.strip(), "output_len": None} for p in raw.split("\n\n") if p.strip()]
    if not entries:
        raise ValueError(f"{path}: no prompts in the file")
    return entries


async def build_prompts(
    n: int,
    input_len: LengthSpec,
    output_len: LengthSpec,
    *,
    source: str | None,
    tokenizer: Tokenizer | None,
    endpoint_kind: str,
    seed: int,
    max_model_len: int | None = None,
) -> list[Prompt]:
    """``n`` prompts, reproducible for a given seed (same prompts for both sides of a comparison)."""
    rng = random.Random(seed)
    out_lens = output_len.sample(rng, n, cap=max_model_len - 1 if max_model_len else None)
    if source is not None:
        entries = read_prompt_file(source)
        order: list[int] = []
        while len(order) < n:
            block = list(range(len(entries)))
            rng.shuffle(block)
            order.extend(block)
        prompts = []
        for i, out in zip(order[:n], out_lens, strict=True):
            entry = entries[i]
            text = entry["prompt"]
            out = entry["output_len"] or out
            if isinstance(text, list):
                if endpoint_kind == "chat":
                    raise ValueError(f"{source}: token-id prompts need --endpoint completions")
                prompts.append(Prompt(output_len=out, token_ids=text, input_len=len(text)))
            else:
                prompts.append(Prompt(output_len=out, text=text))
        return prompts

    in_lens = input_len.sample(rng, n)
    if max_model_len:
        in_lens = [max(1, min(i, max_model_len - o)) for i, o in zip(in_lens, out_lens, strict=True)]
    corpus = corpus_text()[:_CORPUS_CHARS]
    if tokenizer is not None and endpoint_kind == "completions":
        ids = await tokenizer.encode(corpus)
        if max(in_lens) >= len(ids):
            raise ValueError(f"--input-len: {max(in_lens)} tokens is longer than the built-in corpus ({len(ids)})")
        prompts = []
        for i, o in zip(in_lens, out_lens, strict=True):
            start = rng.randrange(0, len(ids) - i)
            prompts.append(Prompt(output_len=o, token_ids=ids[start:start + i], input_len=i))
        return prompts
    words = corpus.split()
    if max(in_lens) >= len(words):
        raise ValueError(f"--input-len: {max(in_lens)} words is longer than the built-in corpus ({len(words)})")
    prompts = []
    for i, o in zip(in_lens, out_lens, strict=True):
        start = rng.randrange(0, len(words) - i)
        prompts.append(Prompt(output_len=o, text=" ".join(words[start:start + i])))
    return prompts
