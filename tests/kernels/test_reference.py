"""The torch reference against a float64 dequantized matmul computed by an independent bit reader."""

import pytest
import torch

from tests.helpers import independent_dequantize
from vllm_autoround.format.schema import LayerScheme
from vllm_autoround.format.tensors import pack_linear
from vllm_autoround.kernels.reference import dequantize, reference_linear
from vllm_autoround.quantize.qdq import fake_quantize, quantize_to_codes


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("sym", [True, False])
def test_dequantize_and_linear_match_float64(bits, group_size, sym):
    torch.manual_seed(bits * 100 + group_size + sym)
    n, k = 96, 256
    weight = torch.randn(n, k)
    scheme = LayerScheme(bits, group_size, sym)
    offset = 1 if sym else 0
    tensors = pack_linear(quantize_to_codes(weight, scheme), offset)
    expected_w = independent_dequantize(tensors["qweight"], tensors["qzeros"], tensors["scales"], bits, group_size,
                                         offset)
    ours_w = dequantize(tensors["qweight"], tensors["qzeros"], tensors["scales"], bits, group_size, offset,
                        torch.float64)
    torch.testing.assert_close(ours_w, expected_w, rtol=0, atol=0)
    # the packed weight is what the fake-quant forward used while tuning
    torch.testing.assert_close(fake_quantize(weight, scheme).double(), expected_w, rtol=0, atol=1e-6)
    x = torch.randn(5, k)
    bias = torch.randn(n)
    y = reference_linear(x, tensors["qweight"], tensors["qzeros"], tensors["scales"], bits, group_size, offset, bias)
    y64 = x.double() @ expected_w.T + bias.double()
    assert y.dtype == torch.float32
    assert ((y.double() - y64).norm() / y64.norm()) < 1e-5


def test_reference_keeps_activation_dtype():
    weight = torch.randn(64, 128)
    tensors = pack_linear(quantize_to_codes(weight, LayerScheme(4, 32, True)), 1)
    x = torch.randn(3, 2, 128, dtype=torch.bfloat16)
    y = reference_linear(x, tensors["qweight"], tensors["qzeros"], tensors["scales"], 4, 32, 1)
    assert y.shape == (3, 2, 64) and y.dtype == torch.bfloat16
