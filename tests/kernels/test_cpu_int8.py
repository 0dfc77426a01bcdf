"""The CPU path for 8-bit layers (two 4-bit halves through torch's int4 GEMM, dequantize + F.linear above
OP_MAX_ROWS) against a float64 dequantized matmul."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import checkpoint, cpu_linear_error, rel_err
from tests.kernels.test_cpu_int4 import op_calls_per_row_count
from vllm_autoround.kernels import cpu_int4_layout, cpu_int8

# float32 is exact up to summation order; bf16/fp16 round the scales and zero terms once, each half's output and
# the sum once
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
    if group_size == -1:  # per channel: torch's int8 GEMM, one call
        assert isinstance(w, cpu_int8.Int8Rows) and (w.zero_offsets is None) is sym
    else:
        assert (not w.high_scales_and_zeros[..., 1].any()) is sym  # sym: z = 128, no zero term
    assert cpu_linear_error(cpu_int8.linear, w, ck, rows, dtype) < BOUND[dtype]


def test_zero_points_far_from_the_middle_keep_their_precision():
    """Asym zero points near 0 or 255 leave a large (128 − z)·s zero term on the high half, rounded to bf16 once.
    Both paths stay at the bf16 output's own rounding."""
    ck = checkpoint(8, 32, False, 256, 48, seed=11, row_shift=torch.tensor([3.0, -3.0, 0.0]).repeat(16))
    w = cpu_int8.pack(ck["qweight"], ck["qzeros"], ck["scales"], 8, 32, ck["zero_point_offset"], torch.bfloat16)
    zero_terms = w.high_scales_and_zeros[..., 1].float() / w.low_scales_and_zeros[..., 0].float()  # 128 - z
    assert zero_terms[:, 0].max() >= 120 and zero_terms[:, 1].min() <= -120
    for rows in (2, cpu_int8.OP_MAX_ROWS + 3):
        x = torch.randn(rows, 256, dtype=torch.float64)
        assert rel_err(cpu_int8.linear(x.to(torch.bfloat16), w), x @ ck["w64"].t()) < 6e-3


@pytest.mark.parametrize("group_size, gemm, calls", [(64, "aten::_weight_int4pack_mm_for_cpu", 2),
                                                     (-1, "aten::_weight_int8pack_mm", 1)])
def test_compiled_callers_choose_the_path_per_call(group_size, gemm, calls):
    """Under torch.compile with a dynamic M the op stays opaque: a graph traced at a large M still calls torch's
    GEMM at M=1 (twice for the two halves of a grouped layer), and both answer right."""
    ck = checkpoint(8, group_size, False, 256, 32, seed=2)
    w = cpu_int8.pack(ck["qweight"], ck["qzeros"], ck["scales"], 8, group_size, ck["zero_point_offset"],
                      torch.bfloat16)
    compiled = torch.compile(lambda x: cpu_int8.linear(x, w), dynamic=True, fullgraph=True)
    assert op_calls_per_row_count(compiled, ck, 256, cpu_int8.OP_MAX_ROWS, gemm) == [0, calls]


@pytest.mark.parametrize("bits, group_size, in_features, ok", [
    (8, 128, 4096, True), (8, -1, 96, True), (8, 32, 96, True), (8, 128, 192, False), (4, 128, 4096, False)])
def test_which_layers_it_takes(bits, group_size, in_features, ok):
    assert cpu_int8.supported(bits, group_size, in_features) is ok


def test_refuses_a_layer_it_cannot_take():
    ck = checkpoint(4, 32, True, 64, 16, seed=1)
    with pytest.raises(ValueError, match="bits=4"):
        cpu_int8.pack(ck["qweight"], ck["qzeros"], ck["scales"], 4, 32, ck["zero_point_offset"], torch.bfloat16)


@pytest.mark.parametrize("group_size", [64, -1])
def test_the_dequantized_path_spans_several_chunks(monkeypatch, group_size):
    """With chunks of 128 rows, 296 output rows are three chunks, the last one partial (padded for the halves)."""
    k, n = 256, 296
    monkeypatch.setattr(cpu_int4_layout, "CHUNK_VALUES", 128 * k)
    ck = checkpoint(8, group_size, False, k, n, seed=4)
    w = cpu_int8.pack(ck["qweight"], ck["qzeros"], ck["scales"], 8, group_size, ck["zero_point_offset"],
                      torch.bfloat16)
    x = torch.randn(cpu_int8.OP_MAX_ROWS + 5, k, dtype=torch.float64)
    assert rel_err(cpu_int8.linear(x.to(torch.bfloat16), w), x @ ck["w64"].t()) < 6e-3
