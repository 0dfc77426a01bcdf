"""The CPU path for 2-4-bit layers (torch's int4-packed GEMM) against a float64 dequantized matmul."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import checkpoint, rel_err
from vllm_autoround.kernels import cpu_int4

# float32 is exact up to summation order; bf16/fp16 round the scales once and the output once
BOUND = {torch.float32: 1e-5, torch.bfloat16: 6e-3, torch.float16: 1e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_matches_float64_on_every_scheme(bits, group_size, sym, dtype):
    """N = 48 is not a multiple of the packer's 16-row tiles for W4 (pads), and K = 384 makes per-channel scales
    repeat over 128-wide op groups. A bias and a 3-D input as vLLM passes them."""
    k, n = 384, 48 if bits == 2 else 40 if bits == 4 else 96
    ck = checkpoint(bits, group_size, sym, k, n, seed=bits)
    w = cpu_int4.pack(ck["qweight"], ck["qzeros"], ck["scales"], bits, group_size, ck["zero_point_offset"], dtype)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    y = cpu_int4.linear(x, w, bias)
    assert y.shape == (2, 3, n) and y.dtype == dtype
    ref = x.double() @ ck["w64"].t() + bias.double()
    assert rel_err(y, ref) < BOUND[dtype]


def test_two_bit_weights_keep_their_precision_in_bf16():
    """Writing a 2-bit weight as (q - 8)·s + (8 - z)·s cancels two rounded bf16 terms (2% relative error,
    measured); the codes are shifted instead, so only the scale's own rounding remains."""
    ck = checkpoint(2, 32, True, 512, 48, seed=3)
    w = cpu_int4.pack(ck["qweight"], ck["qzeros"], ck["scales"], 2, 32, ck["zero_point_offset"], torch.bfloat16)
    assert not w.scales_and_zeros[..., 1].any()
    x = torch.randn(4, 512, dtype=torch.float64)
    y = cpu_int4.linear(x.to(torch.bfloat16), w)
    assert rel_err(y, x @ ck["w64"].t()) < 4e-3


@pytest.mark.parametrize("bits, group_size, in_features, ok", [
    (4, 128, 4096, True), (3, 32, 96, True), (2, -1, 576, True), (4, -1, 96, True),
    (8, 128, 4096, False), (4, 16, 4096, False), (4, -1, 80, False)])
def test_which_layers_it_takes(bits, group_size, in_features, ok):
    assert cpu_int4.supported(bits, group_size, in_features) is ok
