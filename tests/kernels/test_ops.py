"""The serving-facing API: quantized_linear, supports, the torch custom ops and their fake kernels."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from tests.kernels.helpers import checkpoint, prepared, rel_err
from vllm_autoround.kernels import quantized_linear, reference_linear, supports
from vllm_autoround.kernels.ops import layout_supported, op_args


def test_reference_backend_matches_reference_linear():
    ck = checkpoint(3, 64, False, 512, 64)
    bias = torch.randn(64)
    x = torch.randn(2, 3, 512, dtype=torch.bfloat16)
    want = reference_linear(x, ck["qweight"], ck["qzeros"], ck["scales"], 3, 64, 0, bias.to(torch.bfloat16))
    got = quantized_linear(x, prepared(ck), bias)  # CPU, backend "auto": the torch path
    assert got.shape == (2, 3, 64) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)


def test_triton_backend_through_custom_op(interpreter):
    ck = checkpoint(4, 32, False, 256, 40)
    p = prepared(ck, bias=torch.randn(40).half())
    override = torch.randn(40)
    x = torch.randn(2, 3, 256, dtype=torch.bfloat16)
    y = quantized_linear(x, p, override, backend="triton")
    ref = x.double() @ ck["w64"].t() + override.double()
    assert y.shape == (2, 3, 40) and y.dtype == torch.bfloat16
    assert rel_err(y, ref) < 1e-2
    y_default_bias = quantized_linear(x[0], p, backend="triton")
    assert rel_err(y_default_bias, x[0].double() @ ck["w64"].t() + p.bias.double()) < 1e-2


def test_bad_input_is_named():
    p = prepared(checkpoint(4, 32, True, 256, 40))
    with pytest.raises(ValueError, match="x has 128 features"):
        quantized_linear(torch.randn(1, 128), p)
    with pytest.raises(ValueError, match="do not take x torch.float32"):
        quantized_linear(torch.randn(1, 256), p, backend="triton")


def test_fake_kernels_give_shapes_without_running():
    p = prepared(checkpoint(4, 128, True, 256, 40))
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        x = mode.from_tensor(torch.randn(7, 256, dtype=torch.bfloat16))
        args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in op_args(p))
        y = torch.ops.vllm_autoround.quantized_gemm(x, *args)
        g = torch.ops.vllm_autoround.gemv(x, *args, 32, 4.0, 4, 2)
        t = torch.ops.vllm_autoround.gemm(x, *args, 16, 32, 2.0, 4, 3, True, False)
        w = torch.ops.vllm_autoround.dequantize(*args[:4], *args[5:], torch.float16)
    assert y.shape == g.shape == t.shape == (7, 40) and y.dtype == torch.bfloat16
    assert w.shape == (256, 40) and w.dtype == torch.float16


@pytest.mark.slow
def test_custom_op_opcheck(interpreter):
    p = prepared(checkpoint(4, 64, False, 256, 40))
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.vllm_autoround.quantized_gemm, (x, *op_args(p)),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.slow
def test_torch_compile_fullgraph_dynamic_m(interpreter):
    ck = checkpoint(8, 128, True, 256, 40)
    p = prepared(ck, bias=torch.randn(40).half())
    f = torch.compile(lambda x: quantized_linear(x, p, backend="triton") * 2.0, fullgraph=True, dynamic=True)
    for m in (1, 5):
        x = torch.randn(2, m, 256, dtype=torch.bfloat16)
        assert rel_err(f(x), 2.0 * (x.double() @ ck["w64"].t() + p.bias.double())) < 1e-2


def test_supports_rules():
    assert not supports(4, 128, 4096, 4096, "cpu")  # CPU serves through the reference
    assert layout_supported(4, 128, 4096, 14336)
    assert layout_supported(3, 64, 4096, 4096) and layout_supported(3, -1, 4128, 4096)
    assert layout_supported(2, 1024, 4096, 4096)  # groups spanning whole blocks
    assert not layout_supported(4, 96, 4032, 4096)  # groups straddle the 128-wide blocks
    assert not layout_supported(5, 128, 4096, 4096)
    assert not layout_supported(3, 128, 4096, 4100)
