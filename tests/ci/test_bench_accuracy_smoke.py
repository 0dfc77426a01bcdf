"""ci/bench_accuracy.py end to end on the toy model with a tiny recipe: every method of every scheme runs,
results accumulate and resume, and the table prints (catches breakage before GPU time is spent)."""

from __future__ import annotations

import json
import math

import pytest

from ci.bench_accuracy import METHODS, SCHEMES, main

pytestmark = pytest.mark.slow
TINY = ["--nsamples", "4", "--seqlen", "64", "--iters", "2", "--eval_seqlen", "64", "--eval_samples", "2"]


def test_every_entry_runs_and_a_rerun_resumes(toy_llama, tmp_path, capsys):
    results = tmp_path / "acc.json"
    assert main(["--model", str(toy_llama), "--results", str(results), "--schemes", "W2g64", *TINY]) == 0
    first = json.loads(results.read_text())
    assert set(first["W2g64"]) == set(METHODS) and math.isfinite(first["bf16"]["ppl"])
    for run in first["W2g64"].values():
        assert math.isfinite(run["ppl"]) and run["seconds"] > 0
    ours, rtn = first["W2g64"]["ours-default"], first["W2g64"]["rtn"]
    assert len(ours["best_iter"]) == 2 and None not in ours["best_iter"]  # SignRound ran on both blocks
    # two iterations at lr 1/2 may keep the RTN start (iteration 0) everywhere; then, and only then, the
    # weights and the perplexity are RTN's
    assert (ours["ppl"] == rtn["ppl"]) == (max(ours["best_iter"]) == 0), (ours, rtn)
    assert main(["--model", str(toy_llama), "--results", str(results), "--methods", "rtn", *TINY]) == 0
    second = json.loads(results.read_text())
    assert second["W2g64"] == first["W2g64"]  # finished entries are not redone
    assert set(second) >= {"info", "bf16", *SCHEMES}
    assert "| W2g64 | auto-round |" in capsys.readouterr().out
