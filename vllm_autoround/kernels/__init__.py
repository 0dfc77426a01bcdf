"""Dequant-GEMM kernels: the torch reference (every device) and Triton kernels (CUDA).

Nothing here imports vLLM; ``vllm_autoround.serving`` adapts these functions to vLLM's layers.

Serving calls three things:

* ``prepare_weight(qweight, qzeros, scales, bits=, group_size=, zero_point_offset=, bias=)``: the
  one-time repack at load time (:mod:`.layout`), on the tensors' device; a :class:`PreparedWeight`.
* ``quantized_linear(x, prepared)``: CUDA -> Triton kernels through ``torch.ops.vllm_autoround.*``;
  other devices -> the torch reference.
* ``supports(bits, group_size, in_features, out_features, device)``: False -> use the reference.
"""

from vllm_autoround.kernels.layout import PreparedWeight, dequantize_prepared, prepare_weight
from vllm_autoround.kernels.ops import quantized_linear, supports
from vllm_autoround.kernels.reference import dequantize, reference_linear

__all__ = [
    "PreparedWeight",
    "dequantize",
    "dequantize_prepared",
    "prepare_weight",
    "quantized_linear",
    "reference_linear",
    "supports",
]
