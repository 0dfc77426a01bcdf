"""Bit packing of small unsigned integers into int32 words (GPTQ layout, 3-bit straddling included).

Every 32 consecutive values along the packed axis form a little-endian bit stream of ``bits``
int32 words: value ``j`` occupies bits ``[j*bits, (j+1)*bits)`` of the stream.
"""

from __future__ import annotations

import torch

from vllm_autoround.format.errors import FormatError

SUPPORTED_BITS = (2, 3, 4, 8)
_MASK32 = 0xFFFFFFFF


def check_bits(bits: int, what: str = "bits") -> None:
    if bits not in SUPPORTED_BITS:
        raise FormatError(f"{what}={bits} is not supported; use one of {SUPPORTED_BITS}")


def values_per_chunk(bits: int) -> int:
    """How many values must be packed together so that they fill whole int32 words."""
    return 32 if bits == 3 else 32 // bits


def _stream_slots(bits: int) -> list[tuple[int, int, int]]:
    """(value index, word index, bit shift) for the 32 values of one chunk of ``bits`` words."""
    return [(j, (j * bits) // 32, (j * bits) % 32) for j in range(32)]


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Reinterpret unsigned 32-bit values held in int64 as int32 (two's complement)."""
    words = words & _MASK32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _pack_dim0(values: torch.Tensor, bits: int) -> torch.Tensor:
    rows, cols = values.shape
    v = values.to(torch.int64).reshape(rows // 32, 32, cols)
    words = torch.zeros(rows // 32, bits, cols, dtype=torch.int64, device=values.device)
    for j, word, shift in _stream_slots(bits):
        words[:, word] |= (v[:, j] << shift) & _MASK32
        if shift + bits > 32:
            words[:, word + 1] |= v[:, j] >> (32 - shift)
    return _to_int32(words.reshape(rows // 32 * bits, cols))


def _unpack_dim0(packed: torch.Tensor, bits: int) -> torch.Tensor:
    words_total, cols = packed.shape
    w = (packed.to(torch.int64) & _MASK32).reshape(words_total // bits, bits, cols)
    mask = (1 << bits) - 1
    out = torch.empty(words_total // bits, 32, cols, dtype=torch.int64, device=packed.device)
    for j, word, shift in _stream_slots(bits):
        value = w[:, word] >> shift
        if shift + bits > 32:
            value = value | (w[:, word + 1] << (32 - shift))
        out[:, j] = value & mask
    return out.reshape(words_total // bits * 32, cols).to(torch.int32)


def _check_values(values: torch.Tensor, bits: int, axis_len: int, what: str) -> None:
    check_bits(bits)
    if values.dim() != 2:
        raise FormatError(f"{what}: expected a 2-D tensor, got shape {tuple(values.shape)}")
    if axis_len % 32 and (bits == 3 or axis_len % (32 // bits)):
        raise FormatError(f"{what}: packed axis of length {axis_len} is not a multiple of "
                          f"{values_per_chunk(bits)} for {bits}-bit packing")
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= 2**bits):
        raise FormatError(f"{what}: values outside [0, {2**bits - 1}] cannot be packed in {bits} bits")


def _pad_to_32(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    rows = values.shape[0]
    padded = -(-rows // 32) * 32
    if padded == rows:
        return values, rows
    pad = torch.zeros(padded - rows, values.shape[1], dtype=values.dtype, device=values.device)
    return torch.cat([values, pad]), rows


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``[R, C]`` integers in ``[0, 2**bits)`` along R into int32 ``[R * bits / 32, C]``."""
    _check_values(values, bits, values.shape[0] if values.dim() == 2 else 0, "pack_rows")
    padded, rows = _pad_to_32(values)
    return _pack_dim0(padded, bits)[: rows * bits // 32]


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_rows`: int32 ``[W, C]`` to int32 values ``[W * 32 / bits, C]``."""
    check_bits(bits)
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise FormatError(f"unpack_rows: expected a 2-D int32 tensor, got {packed.dtype} {tuple(packed.shape)}")
    if packed.shape[0] % bits and bits == 3:
        raise FormatError(f"unpack_rows: {packed.shape[0]} words is not a multiple of 3 for 3-bit packing")
    words, rows = _pad_to_32(packed) if bits != 3 else (packed, packed.shape[0])
    return _unpack_dim0(words, bits)[: rows * 32 // bits]


def pack_cols(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``[R, C]`` integers along C into int32 ``[R, C * bits / 32]`` (the qzeros layout)."""
    _check_values(values, bits, values.shape[1] if values.dim() == 2 else 0, "pack_cols")
    return pack_rows(values.t().contiguous(), bits).t().contiguous()


def unpack_cols(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_cols`."""
    return unpack_rows(packed.t().contiguous(), bits).t().contiguous()


def unpack_codes_and_zeros(qweight: torch.Tensor, qzeros: torch.Tensor, bits: int,
                           zero_point_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's codes ``[K, N]`` and true zero points ``[G, N]`` (the stored ones plus ``zero_point_offset``)."""
    return unpack_rows(qweight, bits), unpack_cols(qzeros, bits) + zero_point_offset
