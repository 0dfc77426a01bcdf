"""Torch custom ops (namespace ``vllm_autoround``) around the Triton kernels, and the public entry.

Every op has a fake (meta) implementation so that torch.compile can trace through it and vLLM can
capture CUDA graphs around it. The ops take the :class:`PreparedWeight` as its plain tensors and ints.
``counters`` is written inside a launch but handed back zeroed, so no op declares a mutation.
"""

from __future__ import annotations

import torch

from vllm_autoround.kernels import launch, warmup
from vllm_autoround.kernels import triton_kernels as tk
from vllm_autoround.kernels.layout import PreparedWeight, block_k, dequantize_prepared
from vllm_autoround.kernels.tuning import TUNER

SUPPORTED_BITS = (2, 3, 4, 8)


def _prepared(qweight, scales, zeros, counters, bias, bits, group_size, in_features, zero_point, interleave):
    return PreparedWeight(qweight=qweight, scales=scales, zeros=zeros, counters=counters, bias=bias, bits=bits,
                          group_size=group_size, in_features=in_features, out_features=qweight.shape[1],
                          zero_point=zero_point, interleave=interleave)


def _out_fake(x: torch.Tensor, qweight: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], qweight.shape[1])


@torch.library.custom_op("vllm_autoround::quantized_gemm", mutates_args=())
def quantized_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                   counters: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int, in_features: int,
                   zero_point: int, interleave: int) -> torch.Tensor:
    """``x[M, K] @ W.T (+ bias)``; picks the kernel for M (tuned or default configuration). A weight shape's
    first call with M rows prepares every smaller M bucket too (:mod:`.warmup`)."""
    p = _prepared(qweight, scales, zeros, counters, bias, bits, group_size, in_features, zero_point, interleave)
    warmup.prepare_for(x, p)
    return launch.run(x, p, TUNER.choose(x, p))


@quantized_gemm.register_fake
def _(x, qweight, scales, zeros, counters, bias, bits, group_size, in_features, zero_point, interleave):
    return _out_fake(x, qweight)


@torch.library.custom_op("vllm_autoround::gemv", mutates_args=())
def gemv_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
            counters: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int, in_features: int,
            zero_point: int, interleave: int, block_n: int, waves: float, num_warps: int,
            num_stages: int) -> torch.Tensor:
    """The CUDA-core split-K kernel with an explicit configuration."""
    p = _prepared(qweight, scales, zeros, counters, bias, bits, group_size, in_features, zero_point, interleave)
    cfg = launch.KernelConfig("gemv", block_n=block_n, waves=waves, num_warps=num_warps, num_stages=num_stages)
    return launch.gemv(x, p, cfg)


@gemv_op.register_fake
def _(x, qweight, scales, zeros, counters, bias, bits, group_size, in_features, zero_point, interleave,
      block_n, waves, num_warps, num_stages):
    return _out_fake(x, qweight)


@torch.library.custom_op("vllm_autoround::gemm", mutates_args=())
def gemm_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
            counters: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int, in_features: int,
            zero_point: int, interleave: int, block_m: int, block_n: int, waves: float, num_warps: int,
            num_stages: int, scale_after: bool, w_first: bool) -> torch.Tensor:
    """The tensor-core tiled kernel with an explicit configuration."""
    p = _prepared(qweight, scales, zeros, counters, bias, bits, group_size, in_features, zero_point, interleave)
    cfg = launch.KernelConfig("gemm", block_m=block_m, block_n=block_n, waves=waves, num_warps=num_warps,
                              num_stages=num_stages, scale_after=scale_after, w_first=w_first)
    return launch.gemm(x, p, cfg)


@gemm_op.register_fake
def _(x, qweight, scales, zeros, counters, bias, bits, group_size, in_features, zero_point, interleave,
      block_m, block_n, waves, num_warps, num_stages, scale_after, w_first):
    return _out_fake(x, qweight)


@torch.library.custom_op("vllm_autoround::dequantize", mutates_args=())
def dequantize_op(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, counters: torch.Tensor,
                  bits: int, group_size: int, in_features: int, zero_point: int, interleave: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """The weight as ``[K, N]`` in ``dtype`` (the large-M path's first half)."""
    p = _prepared(qweight, scales, zeros, counters, None, bits, group_size, in_features, zero_point, interleave)
    return launch.dequantize(p, dtype)


@dequantize_op.register_fake
def _(qweight, scales, zeros, counters, bits, group_size, in_features, zero_point, interleave, dtype):
    return qweight.new_empty(in_features, qweight.shape[1], dtype=dtype)


def op_args(p: PreparedWeight, bias: torch.Tensor | None = None) -> tuple:
    """The prepared weight as the arguments of :func:`quantized_gemm` after ``x`` (``bias`` overrides)."""
    return (p.qweight, p.scales, p.zeros, p.counters, p.bias if bias is None else bias, p.bits, p.group_size,
            p.in_features, p.zero_point, p.interleave)


def supports(bits: int, group_size: int, in_features: int, out_features: int, device: torch.device | str) -> bool:
    """Whether the Triton kernels serve this layer on ``device`` (else: the torch reference)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability(device) < (8, 0):
        return False
    return layout_supported(bits, group_size, in_features, out_features)


def layout_supported(bits: int, group_size: int, in_features: int, out_features: int) -> bool:
    """Shape rules of the kernels: groups must tile the layout's K blocks (or span all of K)."""
    if bits not in SUPPORTED_BITS or in_features % 32 or (out_features * bits) % 32:
        return False
    if group_size in (-1, in_features):
        return True
    bk = block_k(bits)
    return group_size > 0 and in_features % group_size == 0 and group_size % 16 == 0 and (
        bk % group_size == 0 or group_size % bk == 0)


def _use_triton(x: torch.Tensor, p: PreparedWeight, backend: str) -> bool:
    if backend == "reference":
        return False
    triton_ok = x.dtype in launch.TRITON_DTYPES and layout_supported(
        p.bits, p.group_size, p.in_features, p.out_features)
    if backend == "triton":
        if not triton_ok:
            raise ValueError(f"quantized_linear: the Triton kernels do not take x {x.dtype} with bits={p.bits} "
                             f"group_size={p.group_size} [{p.out_features}, {p.in_features}]")
        return True
    # No device-capability query here: this runs under torch.compile's tracing (supports() is for load time).
    return triton_ok and x.device.type == "cuda"


def quantized_linear(x: torch.Tensor, prepared: PreparedWeight, bias: torch.Tensor | None = None,
                     backend: str = "auto") -> torch.Tensor:
    """``x[..., K] @ W.T + bias`` in ``x``'s dtype; ``bias`` defaults to the prepared weight's.

    ``backend``: "auto" (Triton custom ops on CUDA, the torch reference elsewhere), "triton" (forced;
    on CPU only under ``TRITON_INTERPRET=1``) or "reference".
    """
    p = prepared
    bias = p.bias if bias is None else bias
    if x.shape[-1] != p.in_features:
        raise ValueError(f"quantized_linear: x has {x.shape[-1]} features, the weight expects {p.in_features}")
    if not _use_triton(x, p, backend):
        return torch.nn.functional.linear(x, dequantize_prepared(p, x.dtype),
                                          None if bias is None else bias.to(x.dtype))
    if backend == "triton" and x.device.type != "cuda" and not tk.INTERPRETED:
        raise RuntimeError("quantized_linear: Triton on CPU needs TRITON_INTERPRET=1 set before triton is imported")
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.ops.vllm_autoround.quantized_gemm(x2, *op_args(p, bias))
    return y.reshape(*x.shape[:-1], p.out_features)
