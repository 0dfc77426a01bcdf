"""ci/gpu/bench_serve.py's --tune-cache: a later lease starts from the kernel tuner's choices an earlier run saved
to $OUT, instead of spending device time timing candidates again (the vLLM runs need the GPU machine)."""

from __future__ import annotations

import json
import subprocess

import pytest

from ci.gpu import bench_serve
from tests.ci.script_main import run_main
from vllm_autoround.kernels.launch import KernelConfig
from vllm_autoround.kernels.tuning import Tuner, default_cache_path


def _fake_main(monkeypatch, tmp_path, *extra, out=None):
    def fake_run(cmd, env=None, **kwargs):
        # what the engine's tuner would have written while serving
        path = default_cache_path()
        choices = json.loads(path.read_text()) if path.exists() else {}
        choices["dev|w4|g128|sym|bfloat16|m64|n8|k8"] = KernelConfig("gemm16", block_m=64).to_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(choices))
        (tmp_path / "work" / "results" / "ours_w4.json").write_text("{}")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(bench_serve, "report", lambda results_dir: "TABLE")
    return run_main(monkeypatch, bench_serve, ["--work", str(tmp_path / "work"), "--configs", "ours_w4", "--remeasure",
                                               *extra], fake_run, out=out)


def test_choices_saved_to_out_seed_the_next_lease(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "lease1"))
    monkeypatch.delenv("VLLM_AUTOROUND_TUNE_CACHE", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    assert _fake_main(monkeypatch, tmp_path, out=str(out)) == 0
    saved = json.loads((out / "tune_cache.json").read_text())
    assert list(saved) == ["dev|w4|g128|sym|bfloat16|m64|n8|k8"]

    # a fresh machine: the seeded file is where this code's tuner reads it, and the tuner loads its choice
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "lease2"))
    assert not default_cache_path().exists()
    assert _fake_main(monkeypatch, tmp_path, "--tune-cache", str(out / "tune_cache.json")) == 0
    assert "kernel tuning choices from" in capsys.readouterr().out
    assert Tuner()._cache["dev|w4|g128|sym|bfloat16|m64|n8|k8"] == KernelConfig("gemm16", block_m=64)


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"key": {"block_m": 64}}'])
def test_a_file_that_is_not_a_tuning_cache_is_refused_by_name(tmp_path, monkeypatch, capsys, text):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(SystemExit):
        _fake_main(monkeypatch, tmp_path, "--tune-cache", str(bad))
    assert f"--tune-cache {bad}" in capsys.readouterr().err
    assert not default_cache_path().exists()
