"""Prepare every M bucket of a weight's shape at its first call, so that serving never tunes or compiles mid-request.

The autotuner times a bucket's candidates on the bucket's first call, and Triton compiles (or loads from its disk
cache) a kernel variant on its first launch in a process: seconds, or tenths of one, which inside a request is a
latency spike. On the H200 (2026-12-04) vLLM 0.26's JIT monitor reported ``wgmma_gemm_kernel`` compiled during a
benchmark's requests, and our benchmark had to run every batch size once untimed because the prefill of a new
size met buckets the tuner had not timed.

A server's first call is its largest (vLLM's profile run, at ``max_num_batched_tokens`` rows). So when a weight
shape first meets M rows outside CUDA-graph capture, every bucket up to M's is chosen (timed if new) and its
kernel launched at both ends of the bucket. Within a bucket the configuration is fixed and the kernels do not
specialize on M or the split-K counts, so the only launch argument that can change the compiled variant is
whether K is split (and with it whether split-K partials are summed in the kernel). That decision changes at
most once as M grows within a bucket, so the two ends compile every variant the bucket can need.
``VLLM_AUTOROUND_WARMUP=0`` turns this off.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import torch

from vllm_autoround.kernels import launch
from vllm_autoround.kernels.launch import KernelConfig
from vllm_autoround.kernels.layout import PreparedWeight
from vllm_autoround.kernels.tuning import M_BUCKETS, TUNER, m_bucket

_log = logging.getLogger(__name__)
# the largest M bucket prepared so far, per compiled-variant key of a weight (see _shape_key)
_PREPARED: dict[tuple, int] = {}

Choose = Callable[[torch.Tensor, PreparedWeight], KernelConfig]
Run = Callable[[torch.Tensor, PreparedWeight, KernelConfig], torch.Tensor]


def enabled() -> bool:
    return os.environ.get("VLLM_AUTOROUND_WARMUP", "1") != "0"


def bucket_ends(upto: int, after: int = 0) -> list[tuple[int, int]]:
    """``(bucket, M)`` for every bucket in ``(after, upto]``: its largest M first (the tuner times there), then
    its smallest."""
    out: list[tuple[int, int]] = []
    lowest = 1
    for bucket in M_BUCKETS:
        if after < bucket <= upto:
            out += [(bucket, m) for m in dict.fromkeys((bucket, lowest))]
        lowest = bucket + 1
    return out


def warm_buckets(p: PreparedWeight, dtype: torch.dtype, device: torch.device, upto: int, after: int = 0,
                 choose: Choose = TUNER.choose, run: Run = launch.run) -> list[tuple[int, KernelConfig]]:
    """Choose and launch each bucket in ``(after, upto]`` at both of its ends on random activations (the tuner's
    agreement check needs non-zero ones); returns ``(M, configuration)`` per launch."""
    generator = torch.Generator(device=device).manual_seed(0)
    launched = []
    for _, m in bucket_ends(upto, after):
        x = torch.empty(m, p.in_features, dtype=dtype, device=device).normal_(generator=generator)
        cfg = choose(x, p)
        run(x, p, cfg)
        launched.append((m, cfg))
    return launched


def _shape_key(x: torch.Tensor, p: PreparedWeight) -> tuple:
    """What a launch's compiled variant and the tuner's key depend on, besides M."""
    return (x.device, x.dtype, p.bits, p.group_size, p.zero_point, p.interleave, p.in_features,
            p.padded_in_features, p.out_features, p.bias is not None)


def prepare_for(x: torch.Tensor, p: PreparedWeight) -> None:
    """Before a call with ``x``: on CUDA, outside graph capture, warm the buckets this shape has not met up to x's."""
    if x.device.type != "cuda" or not enabled() or torch.cuda.is_current_stream_capturing():
        return
    key = _shape_key(x, p)
    done, upto = _PREPARED.get(key, 0), m_bucket(x.shape[0])
    if upto <= done:
        return
    start = time.perf_counter()
    launched = warm_buckets(p, x.dtype, x.device, upto, done)
    _PREPARED[key] = upto
    _log.info("vllm_autoround: W%d %dx%d: M buckets %d-%d prepared (%d launches, %d configurations) in %.2f s",
              p.bits, p.out_features, p.in_features, min(m_bucket(m) for m, _ in launched), upto, len(launched),
              len({cfg for _, cfg in launched}), time.perf_counter() - start)
