"""The benchmarks' peak memory leaves out what was allocated before the measured run began."""

from __future__ import annotations

import torch

from ci import bench_tuner


def test_peak_is_measured_above_what_was_allocated_at_the_start(monkeypatch):
    gib = 2**30
    allocated = {"now": 3 * gib, "peak": 3 * gib}  # an earlier run left 3 GiB allocated
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: allocated.update(peak=allocated["now"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: allocated["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: allocated["peak"])
    monkeypatch.setattr(bench_tuner, "_peak_baseline", 0)
    bench_tuner.reset_peak()
    allocated["peak"] = allocated["now"] + int(1.5 * gib)  # the measured run's own 1.5 GiB on top
    assert bench_tuner.peak_gb() == 1.5


def test_no_peak_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_tuner.peak_gb() is None
