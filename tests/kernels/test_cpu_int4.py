"""The CPU path for 2-4-bit layers (torch's int4-packed GEMM; dequantize + F.linear above OP_MAX_ROWS) against a
float64 dequantized matmul."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import checkpoint, cpu_linear_error, rel_err
from vllm_autoround.kernels import cpu_int4, cpu_int4_layout

# float32 is exact up to summation order; bf16/fp16 round the scales once and the output once
BOUND = {torch.float32: 1e-5, torch.bfloat16: 6e-3, torch.float16: 1e-3}


@pytest.mark.parametrize("rows", [3, cpu_int4.OP_MAX_ROWS + 1], ids=["op", "dequantized"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_matches_float64_on_every_scheme(bits, group_size, sym, dtype, rows):
    """Both paths. N = 40 or 48 is not a whole block of the packed layout (pads), and K = 384 makes per-channel
    scales repeat over 128-wide op groups. A bias and a 3-D input as vLLM passes them."""
    k, n = 384, 48 if bits == 2 else 40 if bits == 4 else 96
    ck = checkpoint(bits, group_size, sym, k, n, seed=bits)
    w = cpu_int4.pack(ck["qweight"], ck["qzeros"], ck["scales"], bits, group_size, ck["zero_point_offset"], dtype)
    assert cpu_linear_error(cpu_int4.linear, w, ck, rows, dtype) < BOUND[dtype]


def test_the_dequantized_path_spans_several_chunks(monkeypatch):
    """With chunks of 128 rows, 300 output rows are three chunks, the last one partial and padded."""
    k, n = 256, 296
    monkeypatch.setattr(cpu_int4_layout, "CHUNK_VALUES", 128 * k)
    ck = checkpoint(4, 64, False, k, n, seed=9)
    w = cpu_int4.pack(ck["qweight"], ck["qzeros"], ck["scales"], 4, 64, ck["zero_point_offset"], torch.bfloat16)
    step = cpu_int4_layout.chunk_rows(k, cpu_int4_layout.layout())
    assert 2 * step < w.weight.shape[0] < 3 * step
    x = torch.randn(cpu_int4.OP_MAX_ROWS + 5, k, dtype=torch.float64)
    assert rel_err(cpu_int4.linear(x.to(torch.bfloat16), w), x @ ck["w64"].t()) < 6e-3


def test_compiled_callers_choose_the_path_per_call():
    """Under torch.compile with a dynamic M the op stays opaque: a graph traced at a large M (dequantized path)
    still calls torch's int4 GEMM at M=1, and both answer right."""
    ck = checkpoint(4, 64, True, 256, 64, seed=2)
    w = cpu_int4.pack(ck["qweight"], ck["qzeros"], ck["scales"], 4, 64, ck["zero_point_offset"], torch.bfloat16)
    compiled = torch.compile(lambda x: cpu_int4.linear(x, w), dynamic=True, fullgraph=True)
    assert op_calls_per_row_count(compiled, ck, 256) == [0, 1]


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


def op_calls_per_row_count(compiled, ck: dict, k: int, op_max_rows: int = cpu_int4.OP_MAX_ROWS,
                           gemm: str = "aten::_weight_int4pack_mm_for_cpu") -> list[int]:
    """How often torch's ``gemm`` ran for a call at ``op_max_rows`` + 10 rows, then at one row (each checked against
    the float64 weight)."""
    calls = []
    for rows in (op_max_rows + 10, 1):
        x = torch.randn(rows, k, dtype=torch.float64)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = compiled(x.to(torch.bfloat16))
        assert rel_err(y, x @ ck["w64"].t()) < 6e-3
        calls.append(sum(e.name == gemm for e in prof.events()))
    return calls
