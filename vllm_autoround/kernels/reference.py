"""Torch reference for y = x · dequant(W)ᵀ: the numerical ground truth for every other kernel.

It reads the checkpoint layout directly (see :mod:`vllm_autoround.format`) and is the CPU, XPU and
Gaudi serving path, so it favours clarity and vectorised torch ops over speed.
"""

from __future__ import annotations

import torch

from vllm_autoround.format.packing import unpack_codes_and_zeros


def dequantize(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    bits: int,
    group_size: int,
    zero_point_offset: int,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The ``[N, K]`` weight in ``dtype`` (default: the scales' dtype); ``group_size=-1`` is per channel.

    Computed in float32: codes and zeros are exact there, and one rounding to ``dtype`` at the end.
    """
    codes, zeros = unpack_codes_and_zeros(qweight, qzeros, bits, zero_point_offset)  # [K, N], [G, N]
    k = codes.shape[0]
    gs = k if group_size == -1 else group_size
    scales32 = scales.to(torch.float32)
    w = (codes.view(k // gs, gs, -1).to(torch.float32) - zeros.to(torch.float32).unsqueeze(1)) * scales32.unsqueeze(1)
    return w.reshape(k, -1).t().contiguous().to(dtype or scales.dtype)


def reference_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    bits: int,
    group_size: int,
    zero_point_offset: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ dequant(W).T + bias`` in ``x``'s dtype."""
    weight = dequantize(qweight, qzeros, scales, bits, group_size, zero_point_offset, x.dtype)
    return torch.nn.functional.linear(x, weight, bias)
