"""SignRound vs RTN, and end-to-end scale tuning vs RTN, on a real pretrained model and real text: SmolLM2-135M
(PyPI wheel) on held-out Brown.

Two of the 30 blocks are quantized at W2 g64 (the rest stay at 16 bits) so that the CPU run stays short;
the light recipe's SignRound must remove most of RTN's perplexity damage. The quantized perplexity that
``--eval ppl`` reports is re-measured with the suite's own dequantizer.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers import hf_reference_model
from tests.quantize.signround_helpers import quantize_cli
from vllm_autoround.quantize.calibration import load_tokenizer
from vllm_autoround.quantize.evaluate import heldout_windows

pytestmark = pytest.mark.slow

ONLY_BLOCKS_0_1 = json.dumps({r"model\.layers\.([2-9]|[12][0-9])\.": {"bits": 16}})
EVAL = ("--eval", "ppl", "--eval_seqlen", "512", "--eval_samples", "4")


def _eval(ckpt) -> dict:
    return json.loads((ckpt / "quantize_report.json").read_text())["eval"]


def test_signround_beats_rtn_on_heldout_perplexity(smollm2, tmp_path):
    common = ("--bits", "2", "--group_size", "64", "--layer_config", ONLY_BLOCKS_0_1, *EVAL)
    rtn = _eval(quantize_cli(smollm2, tmp_path / "rtn", "--iters", "0", *common))
    sr_ckpt = quantize_cli(smollm2, tmp_path / "sr", "--recipe", "light", "--nsamples", "16", "--seqlen", "256",
                           *common)
    sr = _eval(sr_ckpt)
    fp = rtn["ppl_original"]
    print(f"held-out ppl: fp {fp}, RTN {rtn['ppl_quantized']}, SignRound light {sr['ppl_quantized']}")
    assert sr["ppl_original"] == fp and 20 < fp < 60  # measured 34.46 on these 4 x 512 tokens
    # Measured: RTN 86.68, SignRound light 39.51, full precision 34.46 (blocks 0-3 quantized: 133.5 / 43.7).
    assert rtn["ppl_quantized"] > 1.2 * fp, rtn
    assert sr["ppl_quantized"] - fp < 0.5 * (rtn["ppl_quantized"] - fp), (sr, rtn)

    windows = heldout_windows(load_tokenizer(smollm2), 512, 4)
    model = hf_reference_model(sr_ckpt)
    with torch.no_grad():
        losses = [model(input_ids=row[None], labels=row[None]).loss.double() for row in windows]
    assert math.exp(float(torch.stack(losses).mean())) == pytest.approx(sr["ppl_quantized"], rel=1e-3)


def test_end_to_end_scales_repair_most_of_rtn_damage_on_heldout_text(smollm2, tmp_path):
    """Codes fixed by RTN, only scales tuned end to end (quantize/e2e.py): held-out text, never calibrated on."""
    common = ("--bits", "2", "--group_size", "64", "--iters", "0", "--layer_config", ONLY_BLOCKS_0_1, *EVAL)
    rtn = _eval(quantize_cli(smollm2, tmp_path / "rtn", *common))
    tuned = _eval(quantize_cli(smollm2, tmp_path / "e2e", *common, "--nsamples", "16", "--seqlen", "256",
                               "--e2e_epochs", "2", "--e2e_lr", "3e-2"))
    fp = rtn["ppl_original"]
    print(f"held-out ppl: fp {fp}, RTN {rtn['ppl_quantized']}, RTN + end-to-end scales {tuned['ppl_quantized']}")
    # Measured: fp 34.46, RTN 86.68, RTN + end-to-end scales 45.05 (92 s on the 2-core dev machine).
    assert tuned["ppl_quantized"] - fp < 0.5 * (rtn["ppl_quantized"] - fp), (tuned, rtn)
