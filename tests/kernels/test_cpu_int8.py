"""The CPU path for 8-bit layers (torch's int8 GEMM per group, dequantize + F.linear above OP_MAX_ROWS) against a
float64 dequantized matmul."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import checkpoint, rel_err
from vllm_autoround.kernels import cpu_int8

# float32 is exact up to summation order; bf16/fp16 round the scales once and the output once (plus, asym, the
# op's rounded output before the zero-point term is taken off)
BOUND = {torch.float32: 1e-5, torch.bfloat16: 6e-3, torch.float16: 1e-3}


@pytest.mark.parametrize("rows", [3, cpu_int8.OP_MAX_ROWS + 1], ids=["op", "dequantized"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
def test_matches_float64_on_every_scheme(group_size, sym, dtype, rows):
    """Both paths, every group size, a bias and a 3-D input as vLLM passes them; N = 40 is no power of two."""
    k, n = 384, 40
    ck = checkpoint(8, group_size, sym, k, n, seed=5)
    w = cpu_int8.pack(ck["qweight"], ck["qzeros"], ck["scales"], 8, group_size, ck["zero_point_offset"], dtype)
    assert (w.zero_offsets is None) is sym
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, rows, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    y = cpu_int8.linear(x, w, bias)
    assert y.shape == (1, rows, n) and y.dtype == dtype
    ref = x.double() @ ck["w64"].t() + bias.double()
    assert rel_err(y, ref) < BOUND[dtype]


def test_zero_points_far_from_the_middle_keep_their_precision():
    """Codes are stored as q − 128; asym zero points near 0 or 255 leave a large (z − 128)·s term, subtracted
    after the op. Both paths stay at the bf16 output's own rounding."""
    ck = checkpoint(8, 32, False, 256, 48, seed=11, row_shift=torch.tensor([3.0, -3.0, 0.0]).repeat(16))
    w = cpu_int8.pack(ck["qweight"], ck["qzeros"], ck["scales"], 8, 32, ck["zero_point_offset"], torch.bfloat16)
    assert w.zero_offsets[:, 0].min() <= -120 and w.zero_offsets[:, 1].max() >= 120
    for rows in (2, cpu_int8.OP_MAX_ROWS + 3):
        x = torch.randn(rows, 256, dtype=torch.float64)
        assert rel_err(cpu_int8.linear(x.to(torch.bfloat16), w), x @ ck["w64"].t()) < 6e-3


def test_compiled_callers_choose_the_path_per_call():
    """Under torch.compile with a dynamic M the op stays opaque: a graph traced at a large M still takes the int8
    GEMM at M=1 (and both answer right)."""
    ck = checkpoint(8, 64, False, 256, 32, seed=2)
    w = cpu_int8.pack(ck["qweight"], ck["qzeros"], ck["scales"], 8, 64, ck["zero_point_offset"], torch.bfloat16)
    compiled = torch.compile(lambda x: cpu_int8.linear(x, w), dynamic=True, fullgraph=True)
    op_calls = []
    for rows in (cpu_int8.OP_MAX_ROWS + 10, 1):
        x = torch.randn(rows, 256, dtype=torch.float64)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = compiled(x.to(torch.bfloat16))
        assert rel_err(y, x @ ck["w64"].t()) < 6e-3
        op_calls.append(sum(e.name == "aten::_weight_int8pack_mm" for e in prof.events()))
    assert op_calls == [0, 4]  # four groups of 64, only for the M=1 call


@pytest.mark.parametrize("bits, group_size, in_features, ok", [
    (8, 128, 4096, True), (8, -1, 96, True), (8, 32, 96, True), (8, 128, 192, False), (4, 128, 4096, False)])
def test_which_layers_it_takes(bits, group_size, in_features, ok):
    assert cpu_int8.supported(bits, group_size, in_features) is ok


def test_refuses_a_layer_it_cannot_take():
    ck = checkpoint(4, 32, True, 64, 16, seed=1)
    with pytest.raises(ValueError, match="bits=4"):
        cpu_int8.pack(ck["qweight"], ck["qzeros"], ck["scales"], 4, 32, ck["zero_point_offset"], torch.bfloat16)
