"""CPU path for 2-, 3- and 4-bit layers: torch's int4-packed weight GEMM (``aten._weight_int4pack_mm_for_cpu``).

Why: the torch reference dequantizes the whole weight in float32 on every call. On the 2-core dev machine that
took 218 ms for one 8192 x 2048 W4 layer at M=1, and this op 0.44 ms in bf16 (14.8 ms in float32); stock vLLM's
own CPU kernel made it 5x faster than our plugin on the toy model (653 against 131 tok/s, bf16, 2026-12-05).

The op computes ``w = (q' - 8) * scale + zero`` per group of 32, 64, 128 or 256 inputs, q' a 4-bit code and
scale, zero in the activation dtype. Our codes q with zero point z become ``q' = q - z + 8 + r``, with the
smallest shift r that keeps q' in [0, 15], and ``zero = -r * s``. For 2 and 3 bits and sym 4 bits r is 0, so the
weight is ``(q' - 8) * s`` with no zero term: writing it as ``(q - 8) * s + (8 - z) * s`` instead cancelled two
rounded bf16 terms and cost W2 2% relative error (measured). Asym 4-bit codes fill all 16 values, so there
``r = z - 8`` (about 2.5e-3 relative in bf16, as the scale's own rounding). A group size the op does not take is
split into the largest of its sizes that divides it (per-channel scales repeat), and N is padded with zero-scale
rows to the multiple of 16 the packer needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vllm_autoround.format.packing import unpack_codes_and_zeros

OP_GROUP_SIZES = (256, 128, 64, 32)
N_MULTIPLE = 16
MID = 8  # the op's implicit zero point


@dataclass(frozen=True)
class Int4Packed:
    """A layer's weight as the op takes it."""

    weight: torch.Tensor  # uint8 [N padded, K / 2] from aten._convert_weight_to_int4pack_for_cpu
    scales_and_zeros: torch.Tensor  # [K / group, N padded, 2] in the activation dtype
    group_size: int
    out_features: int


def op_group_size(group_size: int, in_features: int) -> int | None:
    """The op's group size for a checkpoint group (-1: per channel), or None if none divides it."""
    span = in_features if group_size == -1 else group_size
    return next((g for g in OP_GROUP_SIZES if span % g == 0), None)


def supported(bits: int, group_size: int, in_features: int) -> bool:
    return bits <= 4 and in_features % 2 == 0 and op_group_size(group_size, in_features) is not None


def unpack_supported(qweight: torch.Tensor, qzeros: torch.Tensor, bits: int, group_size: int, zero_point_offset: int,
                     takes: Callable[[int, int, int], bool], kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's codes ``[K, N]`` and zero points ``[G, N]`` if ``takes(bits, group_size, K)``, else a ValueError
    that names ``kernel``."""
    codes, zeros = unpack_codes_and_zeros(qweight, qzeros, bits, zero_point_offset)
    if not takes(bits, group_size, codes.shape[0]):
        raise ValueError(f"{kernel}: no layout for bits={bits} group_size={group_size} K={codes.shape[0]}")
    return codes, zeros


def pack(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int,
         zero_point_offset: int, dtype: torch.dtype) -> Int4Packed:
    """Repack checkpoint tensors (GPTQ layout, see :mod:`vllm_autoround.format`) once, at load time."""
    codes, zeros = unpack_supported(qweight, qzeros, bits, group_size, zero_point_offset, supported, "cpu_int4")
    k, n = codes.shape
    op_gs = op_group_size(group_size, k)
    span = k if group_size == -1 else group_size
    shift = torch.minimum((zeros - MID).clamp_min(0), zeros + MID - 2 ** bits)  # r: q' = q - z + 8 + r in [0, 15]
    codes = codes - (zeros - MID - shift).repeat_interleave(span, dim=0)
    scale32 = scales.to(torch.float32)
    pad = -n % N_MULTIPLE
    codes = torch.nn.functional.pad(codes.t(), (0, 0, 0, pad), value=MID).contiguous()  # [N + pad, K]
    repeat = span // op_gs
    scale_rows = torch.nn.functional.pad(scale32, (0, pad)).repeat_interleave(repeat, dim=0)
    zero_rows = torch.nn.functional.pad(-shift * scale32, (0, pad)).repeat_interleave(repeat, dim=0)
    return Int4Packed(weight=torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1),
                      scales_and_zeros=torch.stack([scale_rows, zero_rows], dim=-1).to(dtype).contiguous(),
                      group_size=op_gs, out_features=n)


def linear(x: torch.Tensor, w: Int4Packed, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x[..., K] @ W.T + bias`` in x's dtype (which must be the one :func:`pack` was given)."""
    x2 = x.reshape(-1, x.shape[-1])
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), w.weight, w.group_size, w.scales_and_zeros)
    if y.shape[1] != w.out_features:
        y = y[:, :w.out_features]
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], w.out_features)
