"""The control flow of iteration_graph.run_iterations off the GPU: warm-up, capture, replay and the fallback.

The CUDA pieces (streams, the graph) are replaced by recorders here; that a replayed iteration equals a plain
one is checked on the GPU (``ci/gpu/check_iteration_graph.py``), and that the capturable iteration equals the
former loop, on the CPU by the SignRound tests.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from vllm_autoround.quantize import iteration_graph


class FakeGraph:
    replays = 0

    def replay(self) -> None:
        FakeGraph.replays += 1


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's stream and graph calls as no-ops; ``capturing`` says whether a capture is open."""
    state = {"capturing": False, "fail": False, "streams": [], "capture_streams": []}

    @contextlib.contextmanager
    def graph(g, stream=None):
        state["capture_streams"].append(stream)
        state["capturing"] = True
        try:
            yield
            if state["fail"]:
                raise RuntimeError("operation not permitted when stream is capturing")
        finally:
            state["capturing"] = False

    class Stream:
        def __init__(self, device=None):
            state["streams"].append(self)

        def wait_stream(self, other):
            pass

    FakeGraph.replays = 0
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    current = type("CurrentStream", (), {"wait_stream": lambda self, other: None})()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    monkeypatch.setattr(iteration_graph, "_side_streams", {})
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    return state


def test_plain_loop_runs_every_iteration_and_announces_it(monkeypatch):
    seen, calls = [], []
    monkeypatch.setattr(iteration_graph, "on_iteration", seen.append)
    used = iteration_graph.run_iterations(lambda: calls.append(1), 5, torch.device("cpu"), use_graph=False,
                                          reset=lambda: None)
    assert not used and len(calls) == 5 and seen == [0, 1, 2, 3, 4]


def test_graph_warms_up_captures_once_and_replays_the_rest(fake_cuda, monkeypatch):
    seen, calls = [], []
    monkeypatch.setattr(iteration_graph, "on_iteration", seen.append)
    used = iteration_graph.run_iterations(lambda: calls.append(fake_cuda["capturing"]), 10, torch.device("cuda"),
                                          use_graph=True, reset=lambda: None)
    warm = iteration_graph.WARMUP_ITERS
    assert used
    assert calls == [False] * warm + [True]  # the warm-up runs, then one captured call
    assert FakeGraph.replays == 10 - warm
    assert seen == list(range(10))


def test_every_block_warms_up_and_captures_on_one_stream(fake_cuda):
    """A new stream per block would leave a cuBLAS workspace per block behind for the whole run."""
    for _ in range(3):
        iteration_graph.run_iterations(lambda: None, 5, torch.device("cuda", 0), use_graph=True, reset=lambda: None)
    assert len(fake_cuda["streams"]) == 1
    assert fake_cuda["capture_streams"] == fake_cuda["streams"] * 3


def test_failed_capture_resets_and_finishes_without_a_graph(fake_cuda):
    fake_cuda["fail"] = True
    calls, resets = [], []
    with pytest.warns(UserWarning, match=iteration_graph.GRAPH_ENV):
        used = iteration_graph.run_iterations(lambda: calls.append(fake_cuda["capturing"]), 6, torch.device("cuda"),
                                              use_graph=True, reset=lambda: resets.append(1))
    warm = iteration_graph.WARMUP_ITERS
    assert not used and resets == [1] and FakeGraph.replays == 0
    # warm-up, the failed capture, then every remaining iteration for real
    assert calls == [False] * warm + [True] + [False] * (6 - warm)


def test_too_few_iterations_for_a_graph_run_plainly(fake_cuda):
    calls = []
    used = iteration_graph.run_iterations(lambda: calls.append(1), iteration_graph.WARMUP_ITERS, torch.device("cuda"),
                                          use_graph=True, reset=lambda: None)
    assert not used and len(calls) == iteration_graph.WARMUP_ITERS and FakeGraph.replays == 0


def test_graphs_are_wanted_on_cuda_unless_switched_off(monkeypatch):
    monkeypatch.delenv(iteration_graph.GRAPH_ENV, raising=False)
    assert iteration_graph.graphs_wanted(torch.device("cuda", 0))
    assert not iteration_graph.graphs_wanted(torch.device("cpu"))
    monkeypatch.setenv(iteration_graph.GRAPH_ENV, "0")
    assert not iteration_graph.graphs_wanted(torch.device("cuda", 0))
