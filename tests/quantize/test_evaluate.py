"""``--eval ppl``: held-out perplexity of the original and the quantized model, checked independently.

The reference reads the checkpoint with the suite's own numpy dequantizer into a fresh Hugging Face model
and scores the held-out Brown text in float64 log-softmax, window by window.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers import hf_reference_model
from tests.quantize.signround_helpers import quantize_cli
from vllm_autoround.format.errors import FormatError
from vllm_autoround.quantize.calibration import load_tokenizer
from vllm_autoround.quantize.corpus import brown_documents
from vllm_autoround.quantize.evaluate import apply_weights, heldout_windows


def _reference_ppl(model, windows: torch.Tensor) -> float:
    nll = 0.0
    with torch.no_grad():
        for row in windows:
            logp = torch.log_softmax(model(input_ids=row[None]).logits[0, :-1].double(), dim=-1)
            nll -= float(logp.gather(1, row[1:, None]).sum())
    return math.exp(nll / (windows.shape[0] * (windows.shape[1] - 1)))


def test_windows_are_consecutive_heldout_text(toy_llama):
    tok = load_tokenizer(toy_llama)
    windows = heldout_windows(tok, seqlen=48, max_windows=5)
    prefix = len(tok("x")["input_ids"]) - len(tok("x", add_special_tokens=False)["input_ids"])
    first = tok(brown_documents("heldout")[0], add_special_tokens=False)["input_ids"]
    body = 48 - prefix
    assert windows.shape == (5, 48)
    assert windows[:, prefix:].flatten().tolist() == first[: 5 * body]  # the first article, in order
    with pytest.raises(ValueError, match="--eval_seqlen 10000000 is longer than the held-out text"):
        heldout_windows(tok, seqlen=10_000_000)


def test_eval_ppl_matches_an_independent_reference(toy_llama, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    ckpt = quantize_cli(toy_llama, tmp_path / "w3", "--bits", "3", "--group_size", "32", "--iters", "0",
                        "--eval", "ppl", "--eval_seqlen", "64", "--eval_samples", "6", "--eval_bs", "4")
    ev = json.loads((ckpt / "quantize_report.json").read_text())["eval"]
    assert ev["windows"] == 6 and ev["seqlen"] == 64 and ev["corpus"] == "brown-heldout"
    windows = heldout_windows(load_tokenizer(toy_llama), 64, 6)
    fp = AutoModelForCausalLM.from_pretrained(str(toy_llama), dtype=torch.float32).eval()
    assert ev["ppl_original"] == pytest.approx(_reference_ppl(fp, windows), rel=1e-4)
    assert ev["ppl_quantized"] == pytest.approx(_reference_ppl(hf_reference_model(ckpt), windows), rel=1e-4)
    assert abs(ev["ppl_quantized"] / ev["ppl_original"] - 1) > 1e-4  # the quantized weights were applied
    assert "held-out perplexity (6 x 64 tokens)" in capsys.readouterr().out


def test_bad_eval_flags_fail_before_any_output(toy_llama, tmp_path, capsys):
    from vllm_autoround.quantize.__main__ import main

    rc = main(["--model", str(toy_llama), "--output", str(tmp_path / "x"), "--device", "cpu", "--iters", "0",
               "--eval", "ppl", "--eval_seqlen", "1"])
    assert rc == 2 and "--eval_seqlen (1) must be >= 2" in capsys.readouterr().err
    assert not (tmp_path / "x.partial").exists() and not (tmp_path / "x").exists()


def test_apply_weights_unties_lm_head_and_names_bad_tensors():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=96,
                                         tie_word_embeddings=True))
    embedding = model.get_input_embeddings().weight.detach().clone()
    new_head = torch.randn(96, 64)
    apply_weights(model, {"lm_head.weight": new_head})
    assert torch.equal(model.lm_head.weight, new_head)
    assert torch.equal(model.get_input_embeddings().weight, embedding)  # the tied embedding is untouched
    with pytest.raises(FormatError, match="model.layers.7.mlp.up_proj.weight: the checkpoint has this layer"):
        apply_weights(model, {"model.layers.7.mlp.up_proj.weight": torch.zeros(128, 64)})
    with pytest.raises(FormatError, match=r"model.layers.0.mlp.up_proj.weight: shape \(64, 64\) does not match"):
        apply_weights(model, {"model.layers.0.mlp.up_proj.weight": torch.zeros(64, 64)})
