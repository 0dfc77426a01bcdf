"""Test weights built from random float weights with the package's own quantizer and packer."""

from __future__ import annotations

import torch

from vllm_autoround.format.schema import LayerScheme
from vllm_autoround.format.tensors import pack_linear
from vllm_autoround.quantize.qdq import quantize_to_codes

ALL_SCHEMES = [(b, g, s) for b in (2, 3, 4, 8) for g in (32, 64, 128, -1) for s in (True, False)]


def scheme_id(scheme) -> str:
    bits, gs, sym = scheme
    return f"w{bits}-g{gs}-{'sym' if sym else 'asym'}"


def checkpoint(bits: int, group_size: int, sym: bool, k: int, n: int, seed: int = 0, device: str = "cpu",
               row_shift: torch.Tensor | None = None) -> dict:
    """qweight/qzeros/scales as a checkpoint stores them, plus the float64 dequantized weight [N, K]. ``row_shift``
    [N] moves whole rows of the random weight (asym: zero points away from the middle)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    if row_shift is not None:
        w += row_shift.unsqueeze(1)
    packed = quantize_to_codes(w, LayerScheme(bits, group_size, sym))
    offset = 1 if sym else 0
    t = pack_linear(packed, offset)
    gs = k if group_size == -1 else group_size
    codes = packed.codes.to(torch.float64).view(k // gs, gs, n)
    w64 = ((codes - packed.zeros.to(torch.float64).unsqueeze(1)) * packed.scales.to(torch.float64).unsqueeze(1))
    return {**{key: v.to(device) for key, v in t.items()}, "bits": bits, "group_size": group_size,
            "zero_point_offset": offset, "w64": w64.reshape(k, n).t().contiguous()}


def prepared(ck: dict, bias: torch.Tensor | None = None):
    from vllm_autoround.kernels import prepare_weight

    return prepare_weight(ck["qweight"], ck["qzeros"], ck["scales"], bits=ck["bits"], group_size=ck["group_size"],
                          zero_point_offset=ck["zero_point_offset"], bias=bias)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(y).all(), "non-finite output (an element left unwritten?)"
    return ((y.double() - ref).norm() / ref.norm()).item()


def cpu_linear_error(linear, w, ck: dict, rows: int, dtype: torch.dtype) -> float:
    """``linear(x, w, bias)`` on a 3-D input of ``rows`` rows with a bias, as vLLM passes them: checks the output's
    shape and dtype and returns its relative error against the float64 weight."""
    k, n = ck["w64"].shape[1], ck["w64"].shape[0]
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, rows, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    y = linear(x, w, bias)
    assert y.shape == (1, rows, n) and y.dtype == dtype
    return rel_err(y, x.double() @ ck["w64"].t() + bias.double())


def small_shape(bits: int, group_size: int) -> tuple[int, int]:
    """(K, N): few K blocks, N with a tail past a 32-wide tile; per channel K pads up to a block."""
    k = {2: 256, 3: 512, 4: 256, 8: 256}[bits]
    if group_size == -1:
        k -= 32  # not a whole block: exercises the zero padding
    n = {2: 48, 3: 96, 4: 40, 8: 40}[bits]
    return k, n
