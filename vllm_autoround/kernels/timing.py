"""Timing kernels the way serving runs them: back to back inside a CUDA graph, with the weights cold.

The autotuner (:mod:`vllm_autoround.kernels.tuning`) and the GPU benchmark scripts (``ci/gpu``) both time
this way, so a tiling the tuner keeps is one the benchmark also measures as faster. A short ``do_bench`` of
isolated launches on one weight copy disagreed with this timing by more than 10% on some tilings.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable
from dataclasses import replace

import torch

from vllm_autoround.kernels.layout import PreparedWeight

L2_FALLBACK_BYTES = 50 * 2**20  # an H100's; used where the device does not say


@functools.cache
def l2_bytes() -> int:
    """The current GPU's L2 size (50 MiB on an H100, 60 MiB on an H200), which rotated copies must exceed."""
    if not torch.cuda.is_available():
        return L2_FALLBACK_BYTES
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return getattr(props, "L2_cache_size", 0) or L2_FALLBACK_BYTES


def copies_for(nbytes: int, factor: float = 3.0) -> int:
    """Copies of an ``nbytes`` weight so that cycling through them streams at least ``factor`` x L2."""
    return max(2, math.ceil(factor * l2_bytes() / max(nbytes, 1)))


def prepared_bytes(p: PreparedWeight) -> int:
    return sum(t.numel() * t.element_size() for t in (p.qweight, p.scales, p.zeros))


def rotated_copies(p: PreparedWeight, factor: float = 1.5) -> list[PreparedWeight]:
    """``p`` plus clones of its tensors (codes, scales, zero points, split-K counters), enough that
    cycling through them reads the weights from DRAM, as each layer does once per decode step."""
    extra = copies_for(prepared_bytes(p), factor) - 1
    clones = [replace(p, qweight=p.qweight.clone(), scales=p.scales.clone(), zeros=p.zeros.clone(),
                      counters=p.counters.clone()) for _ in range(extra)]
    return [p, *clones]


def graph_time_us(fns: list[Callable[[], object]], reps: int = 25, min_calls: int = 24) -> float:
    """Median µs per call of a CUDA graph that calls ``fns`` in turn (at least ``min_calls`` calls).

    Every function runs once eagerly first (compiling it, and raising there if it cannot run), then once
    on a side stream, as graph capture requires.
    """
    for f in fns:
        f()
    torch.cuda.synchronize()
    calls = max(min_calls, len(fns))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fns[i % len(fns)]()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / calls)
    del graph
    return statistics.median(times)
