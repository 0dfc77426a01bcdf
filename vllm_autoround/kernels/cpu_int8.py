"""CPU path for 8-bit layers: torch's int8 weight GEMM (``aten._weight_int8pack_mm``) for decode, dequantize +
``F.linear`` for prefill.

Why: 8-bit layers had only the torch reference on the CPU, which unpacks and dequantizes the whole weight in
float32 on every call: 193 ms for one 8192 x 2048 g128 layer at M=1 in bf16 on the 2-core dev machine, against
1.10 ms through the op (0.70 ms per channel; 2026-12-05).

The op computes ``x · (w · s)ᵀ`` for int8 ``w`` with one scale per output channel. Codes q in [0, 255] with zero
point z are kept as ``q − 128`` (int8, exact); a group size below K runs the op once per group and sums in float32.
A zero point other than 128 (asym) leaves ``(z − 128) · s`` per group, subtracted as x's per-group sums times it.
The op is slow at larger M (52 ms at M=128, g128, against 39 ms for dequantize + ``F.linear``), so rows above
:data:`OP_MAX_ROWS` take the dequantized weight instead, built per call in the activation dtype from exact integer
codes ``q − z``, one rounding per weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_autoround.kernels.cpu_int4 import unpack_supported

MID = 128  # the int8 codes are q - MID
# rows up to which the op beats dequantize + F.linear (dev machine, bf16, 8192 x 2048: see docs/benchmarks.md)
OP_MAX_ROWS = 64


@dataclass(frozen=True)
class Int8Codes:
    """A layer's 8-bit weight as the op takes it, one contiguous slab per group."""

    codes: torch.Tensor  # int8 [G, N, group]: q - 128
    scales: torch.Tensor  # [G, N] in the activation dtype
    zero_offsets: torch.Tensor | None  # int16 [G, N]: z - 128; None when every z is 128
    zero_terms: torch.Tensor | None  # float32 [G, N]: (z - 128) * s, s rounded as in ``scales``

    @property
    def out_features(self) -> int:
        return self.codes.shape[1]


def supported(bits: int, group_size: int, in_features: int) -> bool:
    return bits == 8 and (group_size == -1 or (group_size > 0 and in_features % group_size == 0))


def pack(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int,
         zero_point_offset: int, dtype: torch.dtype) -> Int8Codes:
    """Repack checkpoint tensors (GPTQ layout, see :mod:`vllm_autoround.format`) once, at load time."""
    codes, zeros = unpack_supported(qweight, qzeros, bits, group_size, zero_point_offset, supported, "cpu_int8")
    k, n = codes.shape
    span = k if group_size == -1 else group_size
    per_group = (codes - MID).to(torch.int8).view(k // span, span, n).permute(0, 2, 1).contiguous()
    scales = scales.to(dtype).contiguous()
    offsets = (zeros - MID).to(torch.int16)
    if not offsets.any():
        return Int8Codes(codes=per_group, scales=scales, zero_offsets=None, zero_terms=None)
    return Int8Codes(codes=per_group, scales=scales, zero_offsets=offsets.contiguous(),
                     zero_terms=(offsets * scales.to(torch.float32)).contiguous())


def dequantize(w: Int8Codes, dtype: torch.dtype) -> torch.Tensor:
    """The ``[N, K]`` weight in ``dtype``: integer ``q − z`` (exact in bf16 and fp16), times the scale once."""
    codes = w.codes.to(torch.int16)
    if w.zero_offsets is not None:
        codes = codes - w.zero_offsets.unsqueeze(-1)
    weight = codes.to(dtype) * w.scales.to(dtype).unsqueeze(-1)  # [G, N, group]
    return weight.permute(1, 0, 2).reshape(w.out_features, -1)


def linear(x: torch.Tensor, w: Int8Codes, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x[..., K] @ W.T + bias`` in x's dtype (which must be the one :func:`pack` was given)."""
    y = int8_linear(x.reshape(-1, x.shape[-1]), w.codes, w.scales, w.zero_offsets, w.zero_terms, bias)
    return y.reshape(*x.shape[:-1], w.out_features)


# An opaque op for torch.compile: which path runs depends on M, and the group loop is long (112 calls for a
# 14336-wide g128 layer); traced, the first would be fixed at the M vLLM compiles with and the second unrolled.
@torch.library.custom_op("vllm_autoround::cpu_int8_linear", mutates_args=())
def int8_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, zero_offsets: torch.Tensor | None,
                zero_terms: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """``x[M, K] @ W.T + bias`` on :class:`Int8Codes`' tensors."""
    w = Int8Codes(codes=codes, scales=scales, zero_offsets=zero_offsets, zero_terms=zero_terms)
    if x.shape[0] > OP_MAX_ROWS:
        return torch.nn.functional.linear(x, dequantize(w, x.dtype), bias)
    groups, _, span = codes.shape
    if groups == 1:
        y = torch.ops.aten._weight_int8pack_mm(x.contiguous(), codes[0], scales[0])
        y = y.float() if zero_terms is not None else y
    else:
        x_groups = x.reshape(-1, groups, span).transpose(0, 1).contiguous()  # [G, M, group]
        y = torch.zeros(x.shape[0], w.out_features, dtype=torch.float32, device=x.device)
        for g in range(groups):
            y += torch.ops.aten._weight_int8pack_mm(x_groups[g], codes[g], scales[g])
    if zero_terms is not None:
        y -= x.reshape(-1, groups, span).sum(-1, dtype=torch.float32) @ zero_terms
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype)


@int8_linear.register_fake
def _(x, codes, scales, zero_offsets, zero_terms, bias):
    return x.new_empty(x.shape[0], codes.shape[1])
