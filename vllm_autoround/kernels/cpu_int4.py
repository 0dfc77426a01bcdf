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
rows to whole blocks of the packed layout (:mod:`cpu_int4_layout`; at least the 16 the packer needs).

Above :data:`OP_MAX_ROWS` rows (prefill) the op is slower than dequantizing the weight chunk by chunk from the
same packed bytes and calling ``F.linear``: 105 against 33 ms for 512 rows of an 8192 x 2048 g128 layer, 5.6
against 2.0 ms on SmolLM2's 1536 x 576 (bf16, 2-core dev machine, ``ci/bench_cpu_layers.py``). Both run inside
one opaque custom op, so vLLM's torch.compile does not fix the choice at the M it traces with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vllm_autoround.format.packing import unpack_codes_and_zeros
from vllm_autoround.kernels import cpu_int4_layout
from vllm_autoround.kernels.cpu_op import cpu_op

OP_GROUP_SIZES = (256, 128, 64, 32)
N_MULTIPLE = 16  # the packer's
MID = 8  # the op's implicit zero point
# rows up to which the op beats dequantize + F.linear (about even at 64 on SmolLM2's layers, dev machine)
OP_MAX_ROWS = 64


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
    k = codes.shape[0]
    op_gs = op_group_size(group_size, k)
    span = k if group_size == -1 else group_size
    shift = torch.minimum((zeros - MID).clamp_min(0), zeros + MID - 2 ** bits)  # r: q' = q - z + 8 + r in [0, 15]
    codes = codes - (zeros - MID - shift).repeat_interleave(span, dim=0)
    return pack_codes(codes.t(), scales.to(torch.float32), -shift * scales.to(torch.float32), span // op_gs, op_gs,
                      dtype)


def row_multiple() -> int:
    """What N is padded to: whole blocks of the packed layout, where it is known."""
    lay = cpu_int4_layout.layout()
    return N_MULTIPLE if lay is None else max(N_MULTIPLE, lay.rows)


def pack_codes(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, repeat: int, op_group_size: int,
               dtype: torch.dtype) -> Int4Packed:
    """Pack op codes q' in [0, 15] (``[N, K]``) with float32 ``scales`` and ``zeros`` (``[G, N]``, each row
    repeated ``repeat`` times to the op's groups), so that the weight is ``(q' − 8) · scale + zero``."""
    n = codes.shape[0]
    pad = -n % row_multiple()
    codes = torch.nn.functional.pad(codes, (0, 0, 0, pad), value=MID).contiguous()  # [N + pad, K]
    scale_rows = torch.nn.functional.pad(scales, (0, pad)).repeat_interleave(repeat, dim=0)
    zero_rows = torch.nn.functional.pad(zeros, (0, pad)).repeat_interleave(repeat, dim=0)
    return Int4Packed(weight=torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1),
                      scales_and_zeros=torch.stack([scale_rows, zero_rows], dim=-1).to(dtype).contiguous(),
                      group_size=op_group_size, out_features=n)


def linear(x: torch.Tensor, w: Int4Packed, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x[..., K] @ W.T + bias`` in x's dtype (which must be the one :func:`pack` was given)."""
    y = int4_linear(x.reshape(-1, x.shape[-1]), w.weight, w.scales_and_zeros, w.group_size, w.out_features, bias)
    return y.reshape(*x.shape[:-1], w.out_features)


def op_linear(x: torch.Tensor, weight: torch.Tensor, group_size: int, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """torch's int4-packed GEMM for ``x[M, K]``, all padded rows included."""
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x.contiguous(), weight, group_size, scales_and_zeros)


def dequantized_blocks(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                       group_size: int) -> torch.Tensor:
    """``codes · scale (+ zero)`` for a chunk of rows, in place on the integer-valued ``codes`` ``[blocks, K,
    block rows]`` (activation dtype, as :func:`cpu_int4_layout.join` makes them), with ``scales``, ``zeros``
    ``[K / group_size, chunk rows]``. The codes are exact, so the product rounds once (and the zero, where there
    is one, once more): in the activation dtype, which is faster here than float32 and as close as the op's own
    bf16 output."""
    blocks, k, rows = codes.shape
    groups = k // group_size

    def per_block(t: torch.Tensor) -> torch.Tensor:  # [groups, chunk rows] -> [blocks, groups, 1, block rows]
        # contiguous: broadcasting a strided view made the multiply 7x slower (1536 x 576, dev machine)
        return t.view(groups, blocks, rows).transpose(0, 1).unsqueeze(2).contiguous()

    w = codes.unflatten(1, (groups, group_size)).mul_(per_block(scales))
    if zeros is not None:
        w.add_(per_block(zeros))
    return codes


def _op_dequantized_blocks(weight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int, start: int,
                           stop: int, dtype: torch.dtype, lay: cpu_int4_layout.BlockLayout) -> torch.Tensor:
    """Rows ``[start, stop)`` of the weight the op computes, ``(q' − 8) · scale + zero``."""
    sz = scales_and_zeros[:, start:stop]
    codes = cpu_int4_layout.codes(weight, start, stop, sz.shape[0] * group_size, lay, dtype, offset=MID)
    zeros = sz[..., 1]
    return dequantized_blocks(codes, sz[..., 0], zeros if zeros.any() else None, group_size)


def _int4_linear_fake(x, weight, scales_and_zeros, group_size, out_features, bias):
    return x.new_empty(x.shape[0], out_features)


@cpu_op("cpu_int4_linear(Tensor x, Tensor weight, Tensor scales_and_zeros, int group_size, int out_features, "
        "Tensor? bias) -> Tensor", _int4_linear_fake)
def int4_linear(x: torch.Tensor, weight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                out_features: int, bias: torch.Tensor | None) -> torch.Tensor:
    """``x[M, K] @ W.T + bias`` on :class:`Int4Packed`'s tensors (an op: see :mod:`cpu_op`)."""
    if x.shape[0] > OP_MAX_ROWS and (lay := cpu_int4_layout.layout()) is not None:
        y = cpu_int4_layout.dequantized_linear(x, weight.shape[0], lay, lambda start, stop: _op_dequantized_blocks(
            weight, scales_and_zeros, group_size, start, stop, x.dtype, lay))
    else:
        y = op_linear(x, weight, group_size, scales_and_zeros)
    if y.shape[1] != out_features:
        y = y[:, :out_features].contiguous()
    return y if bias is None else y + bias.to(y.dtype)
