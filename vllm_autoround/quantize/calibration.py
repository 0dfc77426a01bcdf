"""Calibration tokens: ``nsamples`` sequences of exactly ``seqlen`` tokens from local text or the built-in corpus.

Sources (``--dataset``):

* a ``.txt`` file: one document (the whole file);
* a ``.jsonl`` file: one JSON value per line, a string, or an object with ``"text"`` (a string) or
  ``"input_ids"`` (a list of token ids, used as given);
* a ``.json`` file: a list of such values;
* a folder: every ``.txt``/``.jsonl``/``.json`` file in it, in name order;
* nothing: :func:`default_corpus`, the calibration split of the Brown Corpus that ships in the package
  (see :mod:`vllm_autoround.quantize.corpus` and docs/tuning.md).

Text documents are tokenized without special tokens and joined (with the EOS token between them) into
one stream; samples are windows of that stream at seeded random, non-overlapping positions when the stream
is long enough and at seeded random (overlapping) positions when it is not. Each window starts with the
tokens the tokenizer itself puts in front of a text (Llama's BOS, nothing for Qwen). Pre-tokenized
documents are used one per sample, truncated to ``seqlen``, so that a caller can reproduce exact tokens.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from vllm_autoround.format.errors import FormatError

SUFFIXES = (".txt", ".jsonl", ".json")
Document = str | list[int]


def default_corpus() -> list[str]:
    """The built-in calibration text: the Brown Corpus without its held-out genre, one document per file.

    This is the one place that names the default source; switch corpora here.
    """
    from vllm_autoround.quantize.corpus import brown_documents

    return brown_documents("calibration")


def _document(value: Any, where: str) -> Document:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            return value["text"]
        ids = value.get("input_ids")
        if isinstance(ids, list) and ids and all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            return ids
    raise FormatError(f"{where}: expected a string or an object with a \"text\" string or an \"input_ids\" list "
                      f"of integers")


def read_documents(path: str | Path) -> list[Document]:
    """Documents of one calibration file or folder (see the module docstring for the formats)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise FormatError(f"{path}: no {'/'.join(SUFFIXES)} calibration files in this folder")
        return [doc for file in files for doc in read_documents(file)]
    if not path.is_file():
        raise FormatError(f"{path}: calibration dataset not found")
    if path.suffix not in SUFFIXES:
        raise FormatError(f"{path}: unsupported calibration file type; use {', '.join(SUFFIXES)} or a folder")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if path.suffix == ".txt":
        return [text] if text.strip() else []
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, list):
            raise FormatError(f"{path}: expected a JSON list of documents")
        return [_document(v, f"{path}[{i}]") for i, v in enumerate(data)]
    docs: list[Document] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
        docs.append(_document(value, f"{path}:{lineno}"))
    return docs


def prefix_tokens(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts in front of any text (e.g. BOS), possibly none."""
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if plain and with_special[len(with_special) - len(plain):] == plain:
        return list(with_special[: len(with_special) - len(plain)])
    return []


def token_stream(tokenizer, texts: list[str]) -> list[int]:
    """The texts tokenized without special tokens and joined with EOS, as one stream of ids."""
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    if not texts:
        return stream
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:  # one batched call: Rust threads
        if ids:
            stream.extend(ids + sep)
    return stream


def _window_starts(length: int, window: int, count: int, gen: torch.Generator) -> list[int]:
    slots = length // window
    if slots >= count:
        chosen = torch.randperm(slots, generator=gen)[:count].sort().values
        return [int(s) * window for s in chosen]
    warnings.warn(f"calibration text has {length} tokens, fewer than nsamples x seqlen = {count * window}; "
                  f"samples overlap", stacklevel=3)
    return torch.randint(0, length - window + 1, (count,), generator=gen).tolist()


def calibration_tokens(
    tokenizer, dataset: str | Path | None, nsamples: int, seqlen: int, seed: int = 42
) -> torch.Tensor:
    """``[nsamples, seqlen]`` token ids (int64) drawn reproducibly (``seed``) from ``dataset``."""
    if nsamples < 1 or seqlen < 2:
        raise ValueError(f"--nsamples ({nsamples}) must be >= 1 and --seqlen ({seqlen}) >= 2")
    where = str(dataset) if dataset else "built-in calibration text"
    docs = read_documents(dataset) if dataset else list(default_corpus())
    ids_docs = [d for d in docs if isinstance(d, list)]
    texts = [d for d in docs if isinstance(d, str)]
    if ids_docs and texts:
        raise FormatError(f"{where}: mixes \"text\" and \"input_ids\" documents; use one kind")
    if ids_docs:
        long_enough = [d[:seqlen] for d in ids_docs if len(d) >= seqlen]
        if len(long_enough) < nsamples:
            raise FormatError(f"{where}: {len(long_enough)} input_ids documents have >= {seqlen} tokens; "
                              f"--nsamples {nsamples} needs that many")
        return torch.tensor(long_enough[:nsamples], dtype=torch.long)
    if tokenizer is None:
        raise FormatError(f"{where}: text calibration data needs the model's tokenizer, and none was found")
    prefix = prefix_tokens(tokenizer)
    body = seqlen - len(prefix)
    stream = token_stream(tokenizer, texts)
    if len(stream) < body:
        raise FormatError(f"{where}: only {len(stream)} tokens of text; --seqlen {seqlen} needs at least {body}")
    gen = torch.Generator().manual_seed(seed)
    starts = _window_starts(len(stream), body, nsamples, gen)
    return torch.tensor([prefix + stream[s : s + body] for s in starts], dtype=torch.long)


def load_tokenizer(model_dir: str | Path):
    """The model directory's tokenizer, or None when it has none (pre-tokenized data still works)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, TypeError):
        return None
