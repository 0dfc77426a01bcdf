"""The trace arithmetic of ci/gpu/profile_decode.py on a hand-made Kineto trace (the GPU run cannot be in CI)."""

from __future__ import annotations

import gzip
import json

import pytest

from ci.gpu.profile_decode import busy_union, summarize_trace


def test_busy_union_counts_overlaps_once():
    assert busy_union([]) == 0
    assert busy_union([(0, 10), (5, 15), (30, 35), (31, 33)]) == 20
    assert busy_union([(4, 6), (0, 10)]) == 10


def test_summary_of_a_trace(tmp_path):
    kernel = dict(cat="kernel", ph="X")
    events = [
        dict(kernel, name="gemv_kernel", ts=100.0, dur=10.0, tid=7, args={"grid": [1, 96, 1]}),
        dict(kernel, name="flash_attn", ts=105.0, dur=10.0, tid=8),  # overlaps on another stream
        dict(kernel, name="gemv_kernel", ts=130.0, dur=5.0, tid=7, args={"grid": [1, 32, 4]}),  # another shape
        dict(cat="cuda_runtime", name="cudaGraphLaunch", ts=90.0, dur=1.0),
        dict(cat="cuda_runtime", name="cudaGraphLaunch", ts=125.0, dur=1.0),
        dict(cat="cuda_driver", name="cuLaunchKernelEx", ts=126.0, dur=1.0),
        dict(cat="cuda_runtime", name="cudaMemcpyAsync", ts=127.0, dur=1.0),
        dict(cat="cpu_op", name="aten::mm", ts=80.0, dur=100.0),
    ]
    path = tmp_path / "worker.pt.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    s = summarize_trace(path, steps=5)
    assert s["kernels"] == 3
    assert s["wall_us_per_step"] == pytest.approx(35 / 5)  # first kernel start to last kernel end
    assert s["busy_us_per_step"] == pytest.approx(20 / 5)
    assert s["idle_share"] == pytest.approx(1 - 20 / 35)
    assert s["launches_per_step"] == {"cuLaunchKernelEx": 0.2, "cudaGraphLaunch": 0.4}
    assert s["top"] == [{"kernel": "gemv_kernel", "us_per_step": 3.0}, {"kernel": "flash_attn", "us_per_step": 2.0}]
    # one kernel over two layer shapes: its grids keep them apart; an event without a grid is still listed
    assert s["sites"] == [
        {"kernel": "gemv_kernel", "grid": "[1, 96, 1]", "calls_per_step": 0.2, "us_per_call": 10.0, "us_per_step": 2.0},
        {"kernel": "flash_attn", "grid": "?", "calls_per_step": 0.2, "us_per_call": 10.0, "us_per_step": 2.0},
        {"kernel": "gemv_kernel", "grid": "[1, 32, 4]", "calls_per_step": 0.2, "us_per_call": 5.0, "us_per_step": 1.0}]


def test_each_configuration_is_profiled_in_its_own_environment(tmp_path, monkeypatch):
    """The Marlin control must be profiled with Machete disabled, as bench_serve measures it (an engine started
    without its CONFIG_ENV would profile Machete under Marlin's name)."""
    import subprocess

    from ci.gpu import profile_decode
    from tests.ci.script_main import run_main

    envs = {}

    def fake_run(cmd, env=None, **kwargs):
        name = cmd[cmd.index("--one") + 1]
        envs[name] = env
        return subprocess.CompletedProcess(cmd, 1)

    argv = ["--work", str(tmp_path), "--configs", "builtin_w4,builtin_marlin_w4"]
    assert run_main(monkeypatch, profile_decode, argv, fake_run) == 0
    assert envs["builtin_marlin_w4"]["VLLM_DISABLED_KERNELS"].startswith("MacheteLinearKernel")
    assert "MacheteLinearKernel" not in envs["builtin_w4"].get("VLLM_DISABLED_KERNELS", "")
