"""ci/bench_tuner.py end to end on the CPU (``--small``): both tools run on the same tokens and are scored."""

from __future__ import annotations

import json

import pytest

from ci.bench_tuner import main

pytestmark = pytest.mark.slow  # auto-round 0.16.1 on the CPU: 22 s alone on the 2-core machine


def test_small_run_tunes_with_both_tools_and_scores_them_against_rtn(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--small", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    runs, mse = result["runs"], result["eval_mse"]
    assert runs["auto-round 0.16.1"]["same_tokens"]  # auto-round consumed exactly our calibration tokens
    assert len(runs["vllm-autoround"]["block_seconds"]) == result["info"]["layers"] == 2
    # the last block, where the quantized chain's error has built up: both tunings well below RTN
    assert mse["vllm-autoround"][-1] < 0.8 * mse["rtn"][-1]
    assert mse["auto-round 0.16.1"][-1] < 0.8 * mse["rtn"][-1]
