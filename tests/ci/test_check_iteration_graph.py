"""ci/gpu/check_iteration_graph.py off the GPU: its runs and comparisons on tiny shapes (no graph on the CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from ci.gpu.check_iteration_graph import compare, main


def test_small_run_compares_every_tensor_of_the_three_checkpoints(tmp_path):
    out = tmp_path / "graph.json"
    assert main(["--small", "--layers", "2", "--iters", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu"
    assert result["graph"]["cuda_graph"] == [False, False]  # the CPU always runs the plain loop
    for key in ("plain_1_vs_plain_2", "plain_1_vs_graph", "plain_2_vs_graph"):
        assert result[key]["tensors"] > 0 and result[key]["identical"] == result[key]["tensors"]


def test_compare_counts_differing_tensors_and_their_share():
    a = {"x": torch.zeros(4), "y": torch.ones(2)}
    b = {"x": torch.tensor([0.0, 1.0, 0.0, 0.0]), "y": torch.ones(2)}
    assert compare(a, b) == {"tensors": 2, "identical": 1, "max_differing_share": 0.25, "differing": ["x"]}
    with pytest.raises(ValueError, match="different tensors"):
        compare(a, {"x": a["x"]})
