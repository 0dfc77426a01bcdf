"""Triton's Gluon, imported once for the Gluon kernels, with the names that moved between releases.

Gluon is experimental: absent from some Triton builds, and its API changes between releases (the GPU
machine has Triton 3.6, CI 3.9). ``HAVE_GLUON`` is False where it cannot be imported; the kernels'
``supported()`` checks it and the launchers fall back to the Triton kernels.
"""

from __future__ import annotations

import functools

import torch

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    # renamed after Triton 3.6: the newer name where it exists
    tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    thread_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
    HAVE_GLUON = True
except (ImportError, AttributeError):  # pragma: no cover - depends on the installed Triton
    gluon = gl = mbarrier = tma = warpgroup_mma = warpgroup_mma_wait = TensorDescriptor = None
    tma_load = thread_barrier = None
    HAVE_GLUON = False

if HAVE_GLUON:
    # shared_memory_descriptor._reinterpret became .reinterpret after Triton 3.6
    if hasattr(gl.shared_memory_descriptor, "reinterpret"):
        @gluon.jit
        def reinterpret(smem, dtype: gl.constexpr, shape: gl.constexpr, layout: gl.constexpr):
            """The same shared memory seen with another dtype, shape or layout."""
            return smem.reinterpret(dtype, shape, layout)
    else:  # pragma: no cover - Triton 3.6, the GPU machine's
        @gluon.jit
        def reinterpret(smem, dtype: gl.constexpr, shape: gl.constexpr, layout: gl.constexpr):
            """The same shared memory seen with another dtype, shape or layout."""
            return smem._reinterpret(dtype, shape, layout)
else:  # pragma: no cover
    reinterpret = None



@functools.cache
def is_hopper(device_index: int) -> bool:
    """Whether the GPU is sm_90, the only architecture the Gluon kernels are written for (cached per device)."""
    return torch.cuda.get_device_capability(device_index)[0] == 9


__all__ = ["HAVE_GLUON", "TensorDescriptor", "gl", "gluon", "is_hopper", "mbarrier", "reinterpret",
           "thread_barrier", "tma", "tma_load", "warpgroup_mma", "warpgroup_mma_wait"]
