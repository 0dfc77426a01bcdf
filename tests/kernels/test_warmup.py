"""Warm-up: a weight shape's first call prepares every smaller M bucket, so serving never compiles or tunes.

The compile keys come from Triton's own argument binder in a process where Triton is not interpreting
(``tests/kernels/launch_keys.py``); nothing runs on a device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vllm_autoround.kernels import warmup

REPO = Path(__file__).resolve().parents[2]


def test_each_bucket_is_launched_at_its_largest_then_its_smallest_m():
    assert warmup.bucket_ends(8) == [(1, 1), (2, 2), (4, 4), (4, 3), (8, 8), (8, 5)]
    assert warmup.bucket_ends(256, after=64) == [(128, 128), (128, 65), (256, 256), (256, 129)]
    assert warmup.bucket_ends(64, after=64) == []


@pytest.fixture(scope="module")
def launch_keys() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "tests.kernels.launch_keys"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_a_configuration_compiles_one_variant_whatever_m(launch_keys):
    """Integer arguments that change with M (M, split-K counts) must not be specialized on (== 1, % 16)."""
    variants = defaultdict(set)
    for kernel, constexprs, key, _ in launch_keys["calls"]:
        variants[kernel, constexprs].add(key)
    assert {kernel for kernel, _ in variants} == {"gemv_kernel", "gemm_kernel", "gemm16_kernel", "dequant_kernel",
                                                   "sum_partials_kernel", "tma_gemv_kernel", "wgmma_gemm_kernel"}
    several = {kernel: len(keys) for (kernel, _), keys in variants.items() if len(keys) > 1}
    assert not several, f"variants that differ only in how Triton specialized M-dependent integers: {several}"


def test_warm_up_compiles_every_variant_a_later_call_needs(launch_keys):
    warmed = {key for _, _, key in launch_keys["warm"]}
    missed = sorted({(kernel, m) for kernel, _, key, m in launch_keys["calls"] if key not in warmed})
    assert not missed, f"first compiled after the warm-up: {missed[:10]}"
    # the check has teeth: some bucket needs two variants (bucket 4's gemv splits K at M=3, not at M=4)
    by_m = {m: key for _, _, key, m in launch_keys["calls"]}
    assert by_m[3] != by_m[4]


def _cuda_like(m: int, k: int = 64) -> SimpleNamespace:
    return SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.bfloat16, shape=(m, k))


def _weight(k: int = 64, n: int = 32, bias: bool = False) -> SimpleNamespace:
    return SimpleNamespace(bits=4, group_size=128, zero_point=8, interleave=16, in_features=k, padded_in_features=k,
                           out_features=n, bias=torch.zeros(n) if bias else None)


@pytest.fixture
def warmed(monkeypatch):
    """prepare_for with the warm-up itself recorded: (after, upto) per call."""
    calls: list[tuple[int, int]] = []

    def fake_warm(p, dtype, device, upto, after=0):
        calls.append((after, upto))
        return [(upto, None)]

    monkeypatch.setattr(warmup, "warm_buckets", fake_warm)
    monkeypatch.setattr(warmup, "_PREPARED", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    return calls


def test_a_shape_is_prepared_once_up_to_its_largest_call(warmed):
    p = _weight()
    warmup.prepare_for(_cuda_like(16384), p)  # vLLM's profile run: every bucket
    warmup.prepare_for(_cuda_like(7), p)
    warmup.prepare_for(_cuda_like(4096), p)
    assert warmed == [(0, 4096)]


def test_a_larger_call_prepares_only_the_new_buckets(warmed):
    p = _weight()
    warmup.prepare_for(_cuda_like(20), p)
    warmup.prepare_for(_cuda_like(200), p)
    assert warmed == [(0, 32), (32, 256)]


def test_shapes_that_compile_differently_are_prepared_separately(warmed):
    warmup.prepare_for(_cuda_like(8), _weight())
    warmup.prepare_for(_cuda_like(8), _weight(bias=True))
    warmup.prepare_for(_cuda_like(8, k=128), _weight(k=128))
    assert warmed == [(0, 8)] * 3


def test_nothing_is_prepared_off_cuda_under_capture_or_when_turned_off(warmed, monkeypatch):
    p = _weight()
    warmup.prepare_for(torch.zeros(4, 64), p)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    warmup.prepare_for(_cuda_like(4), p)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setenv("VLLM_AUTOROUND_WARMUP", "0")
    warmup.prepare_for(_cuda_like(4), p)
    assert warmed == []


def test_the_gemm_op_prepares_the_shape_before_it_runs(monkeypatch, interpreter):
    from tests.kernels.helpers import checkpoint, prepared
    from vllm_autoround.kernels import quantized_linear

    seen = []
    monkeypatch.setattr(warmup, "prepare_for", lambda x, p: seen.append((tuple(x.shape), p.out_features)))
    quantized_linear(torch.randn(3, 256, dtype=torch.bfloat16), prepared(checkpoint(4, 128, True, 256, 40)),
                     backend="triton")
    assert seen == [((3, 256), 40)]
