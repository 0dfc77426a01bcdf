"""ci/gpu/sweep_e2e.py on the toy model: each variant computes what ``--e2e_epochs`` computes in a normal run,
finished variants are skipped on a rerun, and the SignRound run is kept for the next call."""

from __future__ import annotations

import json

import pytest
import torch

from ci.bench_accuracy import evaluate
from ci.gpu.sweep_e2e import main
from tests.quantize.signround_helpers import quantize_cli
from vllm_autoround.quantize.calibration import load_tokenizer
from vllm_autoround.quantize.evaluate import dequantized_weights, heldout_windows, load_model

pytestmark = pytest.mark.slow
SIGNROUND = ("--iters", "4", "--nsamples", "4", "--batch_size", "4")


def test_a_variant_equals_the_same_settings_in_one_quantize_run(toy_llama, tmp_path, capsys):
    results, work = tmp_path / "sweep.json", tmp_path / "work"
    argv = ["--model", str(toy_llama), "--results", str(results), "--work", str(work), "--bits", "2",
            "--group_size", "32", "--seqlen", "64", "--eval_seqlen", "64", "--eval_samples", "4",
            "--quantize_flags", " ".join(SIGNROUND)]
    variants = [{"nsamples": 8, "epochs": 2, "lr": 1e-2}, {"nsamples": 16}]
    assert main([*argv, "--variants", json.dumps(variants)]) == 0
    sweep = json.loads(results.read_text())
    runs = next(v for k, v in sweep.items() if k.startswith("variants from "))
    assert len(runs) == 2 and (work / "signround" / "config.json").exists()
    first = runs["epochs=2,lr=0.01,nsamples=8,batch_size=4"]
    assert first["report"]["sequences"] == 8 and first["report"]["steps"] == 2 * 2

    # The same settings in one ordinary run: the same held-out perplexity, to the last bit.
    ckpt = quantize_cli(toy_llama, tmp_path / "one_run", "--bits", "2", "--group_size", "32", "--seqlen", "64",
                        *SIGNROUND, "--e2e_epochs", "2", "--e2e_lr", "1e-2", "--e2e_nsamples", "8")
    windows = heldout_windows(load_tokenizer(toy_llama), 64, 4)
    model = load_model(toy_llama, "cpu", torch.float32)
    assert evaluate(model, windows, dequantized_weights(ckpt), "cpu", 4) == first["ppl"]

    capsys.readouterr()
    assert main([*argv, "--variants", json.dumps(variants[:1])]) == 0  # done already: nothing is tuned again
    assert json.loads(results.read_text()) == sweep
    assert "| epochs=1,lr=0.003,nsamples=16,batch_size=4 |" in capsys.readouterr().out
