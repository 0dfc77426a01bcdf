"""ci/bench_cpu_serve.py's arithmetic and table (the serving runs themselves take minutes per configuration)."""

from __future__ import annotations

import sys

import pytest

from ci import bench_cpu_serve as bench


def test_decode_speed_cancels_prefill_and_request_overhead():
    # 2 s of overhead in both, 0.05 s per decode step
    short, long = 2.0 + bench.SHORT * 0.05, 2.0 + bench.LONG * 0.05
    assert bench.decode_tok_s(short, long) == pytest.approx(20.0)
    with pytest.raises(RuntimeError, match="was not slower"):
        bench.decode_tok_s(3.0, 3.0)


def test_table_gives_ratios_to_the_built_in_loader():
    results = {"ours": {"startup_s": 76.1, "decode_tok_s": 67.8}, "builtin": {"startup_s": 80.6,
                                                                           "decode_tok_s": 38.1}}
    text = bench.table(results)
    assert "| ours | 76.1 | 67.8 | 1.78x |" in text and "| builtin | 80.6 | 38.1 | 1.00x |" in text


def test_unknown_configurations_are_refused_by_name(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_cpu_serve.py", "--configs", "ours,marlin"])
    with pytest.raises(SystemExit):
        bench.main()
    assert "unknown configs ['marlin']" in capsys.readouterr().err
