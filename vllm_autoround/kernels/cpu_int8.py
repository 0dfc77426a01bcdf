"""CPU path for 8-bit layers: grouped layers as two 4-bit halves through torch's int4-packed GEMM (:mod:`cpu_int4`),
summed in float32; per-channel layers through torch's int8 GEMM. Above :data:`OP_MAX_ROWS` rows the weight is
dequantized chunk by chunk from the same bytes and multiplied with ``F.linear``.

A code q in [0, 255] with zero point z is ``16·hi + lo``, so ``(q − z)·s = (hi − 8)·16s + (128 − z)·s + (lo − 8)·s
+ 8s``: the high half is a 4-bit layer with scale 16s and zero ``(128 − z)·s``, the low half one with scale s and
zero 8s. For sym (z = 128) every term but the scale is exact in bf16. The halves take one byte per weight, as
int8 codes would.

Why not torch's int8 GEMM (``aten._weight_int8pack_mm``) for grouped layers, as the eleventh session did: it takes
one scale per output channel, so a grouped layer cost one call per group. Per SmolLM2 layer at M=1 (bf16, g64,
2-core dev machine, ``ci/bench_cpu_layers.py``) that was 0.15-0.28 ms against 0.07 ms for the two int4 calls, and
2.05 against 1.16 ms on 8192 x 2048. With one scale per channel it is one call, and twice as fast as the two
halves (0.47 against 0.97 ms on 8192 x 2048, same machine), so per-channel layers keep it (:class:`Int8Rows`).

Prefill rebuilds q from the two packed bytes (``(hi << 4) | (lo & 15)`` for the rows in the low nibbles,
``(hi & 0xF0) | (lo >> 4)`` for the others) and computes ``(q − 128)·s + (128 − z)·s`` in the activation dtype,
with the zero term as stored for the op: one rounding for sym layers, two for asym.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_autoround.kernels import cpu_int4, cpu_int4_layout
from vllm_autoround.kernels.cpu_int4 import op_group_size, pack_codes, unpack_supported
from vllm_autoround.kernels.cpu_op import cpu_op

# rows up to which the two op calls beat dequantize + F.linear (SmolLM2's layers: about even at 32, dev machine)
OP_MAX_ROWS = 32
MID = 128  # q ^ 128 read as a signed byte is q - 128


@dataclass(frozen=True)
class Int8Rows:
    """A per-channel 8-bit layer as torch's int8 GEMM takes it."""

    codes: torch.Tensor  # int8 [N, K]: q - 128
    scales: torch.Tensor  # [N] in the activation dtype
    zero_offsets: torch.Tensor | None  # int16 [N]: z - 128; None when every z is 128

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]


@dataclass(frozen=True)
class Int8Halves:
    """A layer's 8-bit weight as two int4-packed layers."""

    high: torch.Tensor  # uint8 [N padded, K / 2], torch's int4-packed layout of q >> 4
    low: torch.Tensor  # the same for q & 15
    high_scales_and_zeros: torch.Tensor  # [K / group, N padded, 2]: 16·s, (128 − z)·s in the activation dtype
    low_scales_and_zeros: torch.Tensor  # [K / group, N padded, 2]: s, 8·s
    group_size: int  # the op's
    out_features: int


def supported(bits: int, group_size: int, in_features: int) -> bool:
    whole_groups = group_size == -1 or (group_size > 0 and in_features % group_size == 0)
    return bits == 8 and whole_groups and in_features % 2 == 0 and op_group_size(group_size, in_features) is not None


def pack(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int,
         zero_point_offset: int, dtype: torch.dtype) -> Int8Rows | Int8Halves:
    """Repack checkpoint tensors (GPTQ layout, see :mod:`vllm_autoround.format`) once, at load time."""
    codes, zeros = unpack_supported(qweight, qzeros, bits, group_size, zero_point_offset, supported, "cpu_int8")
    k, n = codes.shape
    if group_size == -1:
        offsets = (zeros[0] - MID).to(torch.int16)
        return Int8Rows(codes=(codes.t() - MID).to(torch.int8).contiguous(), scales=scales[0].to(dtype).contiguous(),
                        zero_offsets=offsets if offsets.any() else None)
    op_gs = op_group_size(group_size, k)
    repeat = group_size // op_gs
    s = scales.to(torch.float32)
    high = pack_codes((codes >> 4).t(), 16 * s, (MID - zeros) * s, repeat, op_gs, dtype)
    low = pack_codes((codes & 15).t(), s, cpu_int4.MID * s, repeat, op_gs, dtype)
    return Int8Halves(high=high.weight, low=low.weight, high_scales_and_zeros=high.scales_and_zeros,
                      low_scales_and_zeros=low.scales_and_zeros, group_size=op_gs, out_features=n)


def linear(x: torch.Tensor, w: Int8Rows | Int8Halves, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x[..., K] @ W.T + bias`` in x's dtype (which must be the one :func:`pack` was given)."""
    x2 = x.reshape(-1, x.shape[-1])
    if isinstance(w, Int8Rows):
        y = int8_rows_linear(x2, w.codes, w.scales, w.zero_offsets, bias)
    else:
        y = int8_linear(x2, w.high, w.low, w.high_scales_and_zeros, w.low_scales_and_zeros, w.group_size,
                        w.out_features, bias)
    return y.reshape(*x.shape[:-1], w.out_features)


def _rows_linear_fake(x, codes, scales, zero_offsets, bias):
    return x.new_empty(x.shape[0], codes.shape[0])


@cpu_op("cpu_int8_rows_linear(Tensor x, Tensor codes, Tensor scales, Tensor? zero_offsets, Tensor? bias) -> Tensor",
        _rows_linear_fake)
def int8_rows_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, zero_offsets: torch.Tensor | None,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """``x[M, K] @ W.T + bias`` on :class:`Int8Rows`' tensors: the op, or above OP_MAX_ROWS the weight rebuilt
    chunk by chunk as exact integers ``q − z`` times the scale (one rounding)."""
    n, k = codes.shape
    if x.shape[0] > OP_MAX_ROWS:
        def part(start: int, stop: int) -> torch.Tensor:
            w = codes[start:stop].to(x.dtype)
            if zero_offsets is not None:
                w.sub_(zero_offsets[start:stop, None].to(x.dtype))
            return torch.nn.functional.linear(x, w.mul_(scales[start:stop, None]))

        y = cpu_int4_layout.in_column_chunks(x, n, max(1, cpu_int4_layout.CHUNK_VALUES // k), part)
    else:
        y = torch.ops.aten._weight_int8pack_mm(x.contiguous(), codes, scales)
        if zero_offsets is not None:
            terms = zero_offsets.to(torch.float32) * scales.to(torch.float32)  # (z - 128)·s
            y = (y.float() - x.sum(-1, dtype=torch.float32, keepdim=True) * terms).to(x.dtype)
    return y if bias is None else y + bias.to(y.dtype)


def dequantized_blocks(high: torch.Tensor, low: torch.Tensor, high_scales_and_zeros: torch.Tensor,
                       low_scales_and_zeros: torch.Tensor, group_size: int, start: int, stop: int, dtype: torch.dtype,
                       lay: cpu_int4_layout.BlockLayout) -> torch.Tensor:
    """Rows ``[start, stop)`` of the weight as ``[blocks, K, block rows]`` in ``dtype`` (module docstring)."""
    k = high.shape[1] * 2
    vh = cpu_int4_layout.byte_blocks(high, start, stop, k, lay)
    vl = cpu_int4_layout.byte_blocks(low, start, stop, k, lay)
    low_rows, high_rows = (vh << 4) | (vl & 15), (vh & 0xF0) | (vl >> 4)  # q
    codes = cpu_int4_layout.join(lay, (low_rows ^ MID).view(torch.int8), (high_rows ^ MID).view(torch.int8), dtype)
    zeros = high_scales_and_zeros[:, start:stop, 1]  # (128 - z)·s
    return cpu_int4.dequantized_blocks(codes, low_scales_and_zeros[:, start:stop, 0], zeros if zeros.any() else None,
                                       group_size)


def _int8_linear_fake(x, high, low, high_scales_and_zeros, low_scales_and_zeros, group_size, out_features, bias):
    return x.new_empty(x.shape[0], out_features)


@cpu_op("cpu_int8_linear(Tensor x, Tensor high, Tensor low, Tensor high_scales_and_zeros, "
        "Tensor low_scales_and_zeros, int group_size, int out_features, Tensor? bias) -> Tensor", _int8_linear_fake)
def int8_linear(x: torch.Tensor, high: torch.Tensor, low: torch.Tensor, high_scales_and_zeros: torch.Tensor,
                low_scales_and_zeros: torch.Tensor, group_size: int, out_features: int,
                bias: torch.Tensor | None) -> torch.Tensor:
    """``x[M, K] @ W.T + bias`` on :class:`Int8Halves`' tensors (an op, as cpu_int4's)."""
    if x.shape[0] > OP_MAX_ROWS and (lay := cpu_int4_layout.layout()) is not None:
        y = cpu_int4_layout.dequantized_linear(x, high.shape[0], lay, lambda start, stop: dequantized_blocks(
            high, low, high_scales_and_zeros, low_scales_and_zeros, group_size, start, stop, x.dtype, lay))
    else:
        y = cpu_int4.op_linear(x, high, group_size, high_scales_and_zeros).float()
        y += cpu_int4.op_linear(x, low, group_size, low_scales_and_zeros)
    if y.shape[1] != out_features:
        y = y[:, :out_features]
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype).contiguous()
