"""Torch's int4-packed CPU weight, read back: so a layer stored for torch's int4 GEMM can also be dequantized
(for prefill, where dequantize + ``F.linear`` beats the op) without keeping a second copy of it.

``aten._convert_weight_to_int4pack_for_cpu`` returns ``[N, K/2]`` bytes whose order depends on the CPU (torch
2.13, read back on the dev machine): with AVX512 the rows go in blocks of 64, stored ``[N/64, K, 32]``, row j of
a block in a byte's low nibble and row 32 + j in its high one; with AVX2 in blocks of 32 the same way; without
either, in blocks of 32 with rows 2j and 2j + 1 sharing a byte. Which one this process uses is found once, by
packing a probe and reading it back with each known layout. If none matches (a torch that packs another way),
:func:`layout` is None and callers stay on the op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch

# weight values dequantized at a time: a chunk stays in cache (a whole 8192 x 2048 layer at once ran 2-3x slower
# per value than in chunks of 512 rows, dev machine); smaller layers go in one piece
CHUNK_VALUES = 1 << 20


@dataclass(frozen=True)
class BlockLayout:
    rows: int  # output rows per block; a block is stored [K, rows / 2] bytes
    adjacent: bool  # rows 2j and 2j + 1 share byte j (else rows j and rows/2 + j)


KNOWN_LAYOUTS = tuple(BlockLayout(rows, adjacent) for rows in (64, 32, 16) for adjacent in (False, True))


def byte_blocks(packed: torch.Tensor, start: int, stop: int, k: int, lay: BlockLayout) -> torch.Tensor:
    """The packed bytes of output rows ``[start, stop)`` (whole blocks) as ``[blocks, K, rows / 2]``."""
    return packed[start:stop].reshape((stop - start) // lay.rows, k, lay.rows // 2)


def join(lay: BlockLayout, low_rows: torch.Tensor, high_rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[blocks, K, rows]`` in ``dtype`` from the values of the rows a byte holds in its low and its high nibble,
    written straight into the result (cheaper than joining, then converting). The result is a view of a ``[K,
    blocks · rows]`` tensor: :func:`dequantized_linear` multiplies by it without another copy."""
    blocks, k, half = low_rows.shape
    out = torch.empty(k, blocks, 2 * half, dtype=dtype).transpose(0, 1)
    if lay.adjacent:
        pairs = out.unflatten(-1, (half, 2))
        pairs[..., 0], pairs[..., 1] = low_rows, high_rows
    else:
        out[..., :half], out[..., half:] = low_rows, high_rows
    return out


def codes(packed: torch.Tensor, start: int, stop: int, k: int, lay: BlockLayout, dtype: torch.dtype = torch.uint8,
          offset: int = 0) -> torch.Tensor:
    """The codes minus ``offset`` (at most 8: computed on signed bytes), ``[blocks, K, rows]`` as ``dtype``, of
    output rows ``[start, stop)``."""
    v = byte_blocks(packed, start, stop, k, lay)
    low, high = v & 15, v >> 4
    if offset:
        low, high = low.view(torch.int8) - offset, high.view(torch.int8) - offset
    return join(lay, low, high, dtype)


@lru_cache(maxsize=1)
def layout() -> BlockLayout | None:
    """The layout torch packs with in this process, or None if it is none of :data:`KNOWN_LAYOUTS`."""
    n, k = 128, 256
    probe = torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
    for lay in KNOWN_LAYOUTS:
        read = codes(packed, 0, n, k, lay).transpose(1, 2).reshape(n, k)
        if torch.equal(read, probe.to(torch.uint8)):
            return lay
    return None


def chunk_rows(k: int, lay: BlockLayout) -> int:
    """Output rows per chunk: whole blocks, about CHUNK_VALUES weights."""
    return max(1, CHUNK_VALUES // k // lay.rows) * lay.rows


def in_column_chunks(x: torch.Tensor, rows: int, step: int,
                     part: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """``[M, rows]`` output assembled from ``part(start, stop)``, the columns ``[start, stop)``, ``step`` at a
    time (one call, no copy, when a single chunk covers it)."""
    if step >= rows:
        return part(0, rows)
    y = x.new_empty(x.shape[0], rows)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        y[:, start:stop] = part(start, stop)
    return y


def dequantized_linear(x: torch.Tensor, rows: int, lay: BlockLayout,
                       weight_blocks: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """``x[M, K] @ Wᵀ`` for a ``rows x K`` weight (rows a multiple of ``lay.rows``) given chunk by chunk:
    ``weight_blocks(start, stop)`` returns rows ``[start, stop)`` as ``[blocks, K, block rows]`` in x's dtype."""
    k = x.shape[1]

    def part(start: int, stop: int) -> torch.Tensor:  # a view of [K, rows] from join: no copy in the reshape
        return x @ weight_blocks(start, stop).transpose(0, 1).reshape(k, stop - start)

    return in_column_chunks(x, rows, chunk_rows(k, lay), part)
