"""Which weight path a layer uses: Triton kernels on CUDA, torch elsewhere.

On a CPU the torch path runs 2-, 3- and 4-bit layers through torch's int4-packed GEMM (``kernels/cpu_int4.py``;
``VLLM_AUTOROUND_CPU_INT4=0`` turns it off), 8-bit layers as two 4-bit halves through the same GEMM
(``kernels/cpu_int8.py``; ``VLLM_AUTOROUND_CPU_INT8=0``), both dequantizing from the same bytes for prefill, and
the rest through the torch reference, which XPU and Gaudi use for every layer. ``VLLM_AUTOROUND_BACKEND=torch``
forces the torch path; ``VLLM_AUTOROUND_DEQUANT_CACHE=1`` keeps a dequantized copy of each weight on the torch
path, trading memory for speed.
"""

from __future__ import annotations

import os

TORCH = "torch"
TRITON = "triton"
EAGER_DEVICE_TYPES = ("xpu", "hpu")


def device_type() -> str:
    from vllm.platforms import current_platform

    return getattr(current_platform, "device_type", "cpu") or "cpu"


def choose_backend() -> str:
    forced = os.environ.get("VLLM_AUTOROUND_BACKEND", "").strip().lower()
    if forced in (TORCH, TRITON):
        return forced
    if forced:
        raise ValueError(f"VLLM_AUTOROUND_BACKEND={forced!r}: expected 'torch' or 'triton'")
    return TRITON if device_type() == "cuda" else TORCH


def dequant_cache_enabled() -> bool:
    return os.environ.get("VLLM_AUTOROUND_DEQUANT_CACHE", "0").strip().lower() in ("1", "true", "yes")


def _switched_on(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no")


def cpu_int4_enabled() -> bool:
    return _switched_on("VLLM_AUTOROUND_CPU_INT4")


def cpu_int8_enabled() -> bool:
    return _switched_on("VLLM_AUTOROUND_CPU_INT8")
