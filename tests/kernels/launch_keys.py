"""Triton's compile keys of our kernels' launches over a range of M, computed by Triton's own argument binder.

Nothing runs on a device: each kernel is replaced by a recorder that binds the launch's arguments the way
``JITFunction.run`` does before it looks up (or compiles) a variant, and keeps the resulting key. So this needs
a process where Triton is not interpreting (the kernels must be JIT functions); ``test_warmup.py`` starts one::

    python -m tests.kernels.launch_keys        # prints JSON
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

import torch

from tests.kernels.helpers import checkpoint, prepared
from vllm_autoround.kernels import launch
from vllm_autoround.kernels import tma_gemv as tg
from vllm_autoround.kernels import triton_kernels as tk
from vllm_autoround.kernels import wgmma_gemm as wg
from vllm_autoround.kernels.tuning import (
    DEQUANT,
    GEMV_DEFAULT,
    gemm16_config,
    gemm_config,
    m_bucket,
    tma_gemv_config,
    wgmma_config,
)
from vllm_autoround.kernels.warmup import warm_buckets

KERNELS = ((tk, "gemv_kernel"), (tk, "gemm_kernel"), (tk, "gemm16_kernel"), (tk, "dequant_kernel"),
           (tk, "sum_partials_kernel"), (tg, "tma_gemv_kernel"), (wg, "wgmma_gemm_kernel"))
# K = 4 W4 blocks and 112 N tiles of 128: with 132 SMs the split-K decisions change inside buckets
K, N = 512, 14336
# one configuration per bucket, every kernel kind among them, dequantize + cuBLAS where its matmul is cheap here;
# bucket 4's gemv splits K at M=3 but not at M=4, and no other bucket runs that configuration; bucket 512's
# Gluon tiles split K above M=64, so their partials are summed by a second kernel
PLAN = {1: tma_gemv_config(64, 4), 2: tma_gemv_config(128, 4), 4: GEMV_DEFAULT,
        8: gemm_config(16, 128, 4, w_first=True), 16: gemm16_config(16, 128, 8), 32: DEQUANT,
        64: wgmma_config(64, 128, 2, warps=4, stages=3), 128: gemm16_config(64, 128, 1, stages=3),
        256: wgmma_config(256, 128, 1), 512: wgmma_config(256, 128, 8), 1024: wgmma_config(128, 128, 2),
        2048: wgmma_config(128, 128, 1, max_registers=128), 4096: wgmma_config(128, 128, 4)}
UPTO = 4096


def plan_choice(x: torch.Tensor, p) -> launch.KernelConfig:
    return PLAN[m_bucket(x.shape[0])]


class Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records Triton's key and runs nothing."""

    def __init__(self, kernel, log: list) -> None:
        from triton.backends.nvidia.compiler import CUDABackend
        from triton.runtime.jit import create_function_from_signature

        self.name = kernel.fn.__name__
        self.log = log
        self.binder = create_function_from_signature(kernel.signature, kernel.params, CUDABackend)

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            _, specialization, options = self.binder(*args, **kwargs)
            constexprs = [s for s in specialization if s[0] == "constexpr"]
            self.log.append([self.name, repr(constexprs), repr(specialization) + repr(sorted(options.items()))])
        return record


@contextmanager
def recording(log: list):
    """Every kernel recorded; launchers take their native paths and see an H200's 132 SMs."""
    saved = [(module, name, getattr(module, name)) for module, name in KERNELS]
    patched = [(launch, "runs_natively", lambda *a: True), (launch, "_num_sms", lambda device: 132)]
    saved += [(module, name, getattr(module, name)) for module, name, _ in patched]
    try:
        for module, name in KERNELS:
            setattr(module, name, Recorder(getattr(module, name), log))
        for module, name, value in patched:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def sample_ms() -> list[int]:
    """Every M up to 300, then each bucket's edges and a stride through it."""
    ms = set(range(1, 301))
    for lo, hi in ((257, 512), (513, 1024), (1025, 2048), (2049, UPTO)):
        ms |= {lo, lo + 1, hi - 1, hi} | set(range(lo, hi, 61))
    return sorted(ms)


def main() -> None:
    if tk.INTERPRETED:
        sys.exit("launch_keys needs Triton's compiler: unset TRITON_INTERPRET")
    p = prepared(checkpoint(4, 128, True, K, N), bias=torch.zeros(N, dtype=torch.bfloat16))
    warm_log: list = []
    with recording(warm_log):
        warm_buckets(p, torch.bfloat16, torch.device("cpu"), UPTO, choose=plan_choice)
    call_log: list = []
    with recording(call_log):
        for m in sample_ms():
            start = len(call_log)
            launch.run(torch.zeros(m, K, dtype=torch.bfloat16), p, PLAN[m_bucket(m)])
            for entry in call_log[start:]:
                entry.append(m)
    json.dump({"warm": warm_log, "calls": call_log}, sys.stdout)


if __name__ == "__main__":
    main()
