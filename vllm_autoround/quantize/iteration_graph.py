"""Run the tuning iterations of a block, replaying one captured CUDA graph after a short warm-up.

A small block's iteration is bound by the host, not the GPU: on SmolLM2-135M's block with the default batch
(8 x 2048 tokens, H200, ``ci/gpu/profile_tuner.py --shape smollm2``) the GPU was busy 1.45 ms of a 6.83 ms
iteration; the rest was Python, autograd and the launches of ~100 kernels. The iteration reads nothing from
the host (its number lives on the device and the iteration advances it itself), so one capture replays it
for every remaining iteration with the same kernels on the same buffers: 1.99 ms per iteration replayed,
the same checkpoint as the plain loop (docs/tuning.md, Speed).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

GRAPH_ENV = "VLLM_AUTOROUND_CUDA_GRAPH"  # 1 (default): replay a captured iteration on CUDA; 0: plain loop
WARMUP_ITERS = 2  # plain iterations before the capture (compiles the block, initializes cuBLAS)

# A seam for profilers (ci/gpu/profile_tuner.py): called with the iteration number before each iteration.
on_iteration: Callable[[int], None] | None = None

# One side stream per device for every block's warm-up and capture. With a new stream per block, each graphed
# block left 0.068 GB allocated after the run (H200, 12 SmolLM2-shaped blocks, ci/gpu/check_iteration_graph.py):
# 2 x 32 MiB, the size of the cuBLAS workspaces PyTorch keeps per (handle, stream) for the life of the process,
# one for the forward's thread and one for the backward's. Not re-measured with this fix (device time ran out).
_side_streams: dict[torch.device, torch.cuda.Stream] = {}


def graphs_wanted(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get(GRAPH_ENV, "1") != "0"


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """The process's warm-up and capture stream for ``device`` (made on first use)."""
    if device not in _side_streams:
        _side_streams[device] = torch.cuda.Stream(device)
    return _side_streams[device]


def _announce(it: int) -> None:
    if on_iteration is not None:
        on_iteration(it)


def run_iterations(step: Callable[[], None], iters: int, device: torch.device, use_graph: bool,
                   reset: Callable[[], None]) -> bool:
    """Call ``step`` ``iters`` times, or warm up, capture one call and replay it; returns whether a graph ran.

    ``step`` must be capturable when ``use_graph``: no host reads, static shapes, state updated in place.
    ``reset`` clears what a failed capture may have left behind (the gradients) before the plain loop goes on.
    """
    if not use_graph or iters <= WARMUP_ITERS:
        for it in range(iters):
            _announce(it)
            step()
        return False
    side = side_stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # as torch.cuda.graphs documents: warm up on a side stream
        for it in range(WARMUP_ITERS):
            _announce(it)
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=side):  # the stream warmed up, whose workspaces exist
            step()
    except Exception as err:  # a capture cannot run ops that read the host; the plain loop can
        del graph
        reset()
        warnings.warn(f"SignRound: capturing the tuning iteration as a CUDA graph failed ({err}); running the "
                      f"remaining iterations without it (set {GRAPH_ENV}=0 to skip the attempt)", stacklevel=2)
        for it in range(WARMUP_ITERS, iters):
            _announce(it)
            step()
        return False
    for it in range(WARMUP_ITERS, iters):
        _announce(it)
        graph.replay()
    del graph
    return True
