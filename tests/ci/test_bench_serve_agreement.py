"""ci/gpu/bench_serve.py's teacher-forced agreement, on vLLM-shaped prompt log-probabilities (index 0 is None,
index i scores prompt token i; the vLLM runs need the GPU machine)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ci.gpu.bench_serve import forced_agreement


def _entries(prompt: list[int], top: list[int], second_gap: float) -> list:
    """Prompt log-probabilities where position i's top token is top[i] and prompt[i] trails it by second_gap
    unless it is top[i] (then it has rank 1)."""
    out = [None]
    for token, best in zip(prompt[1:], top[1:], strict=True):
        entry = {best: SimpleNamespace(logprob=-0.1, rank=1)}
        if token != best:
            entry[token] = SimpleNamespace(logprob=-0.1 - second_gap, rank=2)
        out.append(entry)
    return out


def test_forced_agreement_scores_the_partners_tokens_at_their_own_positions():
    prompt_len = 4
    theirs = [[7, 8, 9], [5, 6, 7]]
    # this engine agrees everywhere on the first sequence, and prefers 99 at generated position 1 of the second
    ours_top = [[0, 1, 2, 3, 7, 8, 9], [0, 1, 2, 3, 5, 99, 7]]
    seqs = [[0, 1, 2, 3] + t for t in theirs]
    logprobs = [_entries(s, top, 0.25) for s, top in zip(seqs, ours_top, strict=True)]
    result = forced_agreement(logprobs, [prompt_len] * 2, theirs)
    assert result["tokens"] == 6
    assert result["share"] == pytest.approx(5 / 6)
    assert result["gaps"] == pytest.approx([0.25])


def test_forced_agreement_names_a_position_without_log_probabilities():
    theirs = [[7, 8]]
    logprobs = [[None, {1: SimpleNamespace(logprob=0.0, rank=1)}, {7: SimpleNamespace(logprob=0.0, rank=1)}]]
    with pytest.raises(RuntimeError, match="prompt 0, generated position 1"):
        forced_agreement(logprobs, [2], theirs)


def test_gpu_state_reads_nvidia_smi_and_is_none_without_it(monkeypatch):
    import subprocess

    from ci.gpu import bench_serve

    def fake_smi(cmd, **kwargs):
        assert cmd[0] == "nvidia-smi" and "--format=csv,noheader" in cmd
        return subprocess.CompletedProcess(cmd, 0, stdout="1980 MHz, 3201 MHz, 412.30 W, 51, P0\n")

    monkeypatch.setattr(bench_serve.subprocess, "run", fake_smi)
    assert bench_serve.gpu_state() == {"clocks.sm": "1980 MHz", "clocks.mem": "3201 MHz", "power.draw": "412.30 W",
                                       "temperature.gpu": "51", "pstate": "P0"}

    def missing(cmd, **kwargs):
        raise FileNotFoundError(cmd[0])

    monkeypatch.setattr(bench_serve.subprocess, "run", missing)
    assert bench_serve.gpu_state() is None


def test_the_marlin_control_runs_with_machete_disabled_and_both_pairs_are_reported(tmp_path, monkeypatch, capsys):
    """builtin_marlin_w4 is the built-in loader with Machete disabled (vLLM's VLLM_DISABLED_KERNELS): the agreement
    two of vLLM's own kernels reach on this model, beside ours against the built-in loader."""
    import json
    import subprocess

    from ci.gpu import bench_serve
    from tests.ci.script_main import run_main

    envs = {}

    def fake_run(cmd, env=None, **kwargs):
        name = cmd[cmd.index("--one") + 1]
        envs[name] = env
        forced = [{"partner": p, "share": 0.5, "tokens": 2, "gaps": [0.125]} for p in bench_serve.PARTNERS[name]
                  if (tmp_path / "results" / f"{p}.json").exists()]
        result = {"startup_s": 1.0, "tok_s": {str(b): 10.0 for b in bench_serve.BATCHES},
                  "greedy": [[1, 2]] if name != "ours_w4" else [[1, 3]], "forced": forced}
        (tmp_path / "results" / f"{name}.json").write_text(json.dumps(result))
        return subprocess.CompletedProcess(cmd, 0)

    argv = ["--work", str(tmp_path), "--configs", "ours_w4,builtin_marlin_w4,builtin_w4"]
    assert run_main(monkeypatch, bench_serve, argv, fake_run) == 0
    assert envs["builtin_marlin_w4"]["VLLM_DISABLED_KERNELS"] == "MacheteLinearKernel,AllSparkLinearKernel"
    assert "MacheteLinearKernel" not in envs["builtin_w4"].get("VLLM_DISABLED_KERNELS", "")
    table = capsys.readouterr().out
    assert "greedy agreement ours_w4 vs builtin_w4 (tokens before first divergence, 8 prompts x 64): 50.0%" in table
    assert "greedy agreement builtin_marlin_w4 vs builtin_w4 (tokens before first divergence, 8 prompts x 64): " \
           "100.0%" in table
    # builtin_w4 ran last, so it scored both partners' tokens
    assert "builtin_w4's top choice equals ours_w4's greedy token at 50.0% of 2 positions" in table
    assert "builtin_w4's top choice equals builtin_marlin_w4's greedy token at 50.0% of 2 positions" in table
    # a result written before the control pair existed (one dict) still reads
    old = json.loads((tmp_path / "results" / "builtin_w4.json").read_text())
    old["forced"] = old["forced"][0]
    assert bench_serve.forced_scores(old) == [old["forced"]]


def test_each_configuration_logs_to_a_file_and_the_table_counts_kernels_compiled_while_serving(tmp_path, monkeypatch,
                                                                                               capsys):
    """vLLM's JIT monitor names every kernel compiled after the engine's warm-up (on the H200, 2026-12-04, it named
    our wgmma_gemm_kernel): each configuration's log goes to WORK/logs and $OUT, and the table counts the events."""
    import json
    import subprocess

    from ci.gpu import bench_serve
    from tests.ci.script_main import run_main

    engine_logs = {
        "builtin_w4": "INFO init engine (profile, create kv cache, warmup model) took 40.87 s\n"
                      "builtin_w4 batch 1: 475 tok/s\nINFO some detail nobody needs on the console\n",
        "ours_w4": "WARNING [jit_monitor.py:135] Triton kernel JIT compilation during inference: wgmma_gemm_kernel. "
                   "This causes a latency spike\n" * 2
                   + "WARNING Triton kernel JIT compilation during inference: gemm16_kernel. This causes\n",
    }

    def fake_run(cmd, env=None, stdout=None, stderr=None):
        name = cmd[cmd.index("--one") + 1]
        assert env["VLLM_LOGGING_LEVEL"] == "INFO" and stderr == subprocess.STDOUT
        stdout.write(engine_logs[name])
        result = {"startup_s": 1.0, "tok_s": {str(b): 10.0 for b in bench_serve.BATCHES}, "greedy": [[1]]}
        (tmp_path / "results" / f"{name}.json").write_text(json.dumps(result))
        return subprocess.CompletedProcess(cmd, 0)

    out = tmp_path / "out"
    out.mkdir()
    argv = ["--work", str(tmp_path), "--configs", "builtin_w4,ours_w4"]
    assert run_main(monkeypatch, bench_serve, argv, fake_run, out=str(out)) == 0
    console = capsys.readouterr().out
    assert "took 40.87 s" in console and "batch 1: 475 tok/s" in console
    assert "nobody needs" not in console
    assert "JIT compilations while serving (vLLM's JIT monitor), builtin_w4: round 1: none" in console
    assert ("JIT compilations while serving (vLLM's JIT monitor), ours_w4: round 1: gemm16_kernel x1, "
            "wgmma_gemm_kernel x2") in console
    assert json.loads((tmp_path / "results" / "ours_w4.json").read_text())["jit_during_inference"] == {
        "wgmma_gemm_kernel": 2, "gemm16_kernel": 1}
    assert (out / "serve_ours_w4.log").read_text() == engine_logs["ours_w4"]
