"""End-to-end scale tuning (quantize/e2e.py): only scales move, the model's output moves towards the
original's, and a run killed while the tuned scales are being written finishes on ``--resume`` without
training again."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import vllm_autoround.quantize.e2e as e2e
from tests.quantize.signround_helpers import FAST_TUNING, quantize_cli
from vllm_autoround.quantize.__main__ import main
from vllm_autoround.quantize.calibration import calibration_tokens, load_tokenizer
from vllm_autoround.quantize.evaluate import apply_weights, dequantized_weights, load_model
from vllm_autoround.quantize.writer import CheckpointWriter

W2 = ("--bits", "2", "--group_size", "32", *FAST_TUNING)
E2E = ("--e2e_epochs", "3")  # the default learning rate, 3e-3


def _tensors(ckpt) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(ckpt.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def _kl_to_original(model_dir, ckpt, tokens: torch.Tensor) -> float:
    """Mean KL(original ‖ quantized) per token, in float64 (the independent reference for the stage's loss)."""
    original = load_model(model_dir, "cpu", torch.float64)
    quantized = load_model(model_dir, "cpu", torch.float64)
    apply_weights(quantized, {k: v.double() for k, v in dequantized_weights(ckpt).items()})
    with torch.no_grad():
        p = torch.log_softmax(original(input_ids=tokens).logits, -1)
        q = torch.log_softmax(quantized(input_ids=tokens).logits, -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.fixture(scope="module")
def signround_and_e2e(toy_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    return quantize_cli(toy_llama, root / "sr", *W2), quantize_cli(toy_llama, root / "e2e", *W2, *E2E)


def test_only_scales_move_and_the_output_gets_closer(toy_llama, signround_and_e2e):
    sr, tuned = signround_and_e2e
    a, b = _tensors(sr), _tensors(tuned)
    assert a.keys() == b.keys()
    scales = [name for name in a if name.endswith(".scales")]
    assert len(scales) == 14
    for name in a:
        if name.endswith(".scales"):
            continue
        assert torch.equal(a[name], b[name]), f"{name} changed"
    assert sum(not torch.equal(a[n], b[n]) for n in scales) == len(scales)
    assert all(b[n].dtype == a[n].dtype and bool(torch.isfinite(b[n]).all()) for n in scales)

    # The stage's objective, measured independently in float64 on the calibration tokens it was given.
    tokens = calibration_tokens(load_tokenizer(toy_llama), None, 8, 64, 42)
    before, after = _kl_to_original(toy_llama, sr, tokens), _kl_to_original(toy_llama, tuned, tokens)
    assert after < 0.95 * before, (before, after)  # measured 3.71e-4 -> 3.29e-4

    report = json.loads((tuned / "quantize_report.json").read_text())["e2e"]
    assert report["epochs"] == 3 and report["layers"] == 14 and report["steps"] == 6 and "discarded" not in report
    config = json.loads((tuned / "config.json").read_text())["quantization_config"]
    assert config["e2e_epochs"] == 3 and config["e2e_lr"] == 3e-3
    assert not list(tuned.glob("stage-*")), "the stage file must not be published"


def test_resume_after_a_kill_mid_rewrite_writes_the_saved_scales(toy_llama, signround_and_e2e, tmp_path,
                                                                  monkeypatch, capsys):
    out = tmp_path / "ckpt"
    rewrite = CheckpointWriter.write_unit
    rewritten = []

    def killed_on_second_rewrite(self, unit, tensors, info=None):
        if (info or {}).get(e2e.STAGE):
            rewritten.append(unit)
            if len(rewritten) == 2:
                raise KeyboardInterrupt  # stands in for a kill between two unit rewrites
        return rewrite(self, unit, tensors, info)

    monkeypatch.setattr(CheckpointWriter, "write_unit", killed_on_second_rewrite)
    with pytest.raises(KeyboardInterrupt):
        quantize_cli(toy_llama, out, *W2, *E2E)
    monkeypatch.setattr(CheckpointWriter, "write_unit", rewrite)
    assert not out.exists() and (tmp_path / "ckpt.partial" / f"stage-{e2e.STAGE}.safetensors").exists()

    # Other end-to-end settings than the saved stage's: refused, naming the directory.
    assert main(["--model", str(toy_llama), "--output", str(out), "--device", "cpu", *W2,
                 "--e2e_epochs", "3", "--e2e_lr", "1e-2", "--resume"]) == 2
    # Turning the stage off now would publish a mix of tuned and untuned scales: refused too.
    assert main(["--model", str(toy_llama), "--output", str(out), "--device", "cpu", *W2, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "tuned scales end to end with" in err and "already tuned scales end to end" in err, err
    assert "resume with --e2e_epochs 3 --e2e_lr 0.003 --e2e_nsamples 8" in err, err
    monkeypatch.setattr(e2e, "train_scales", lambda *a, **k: pytest.fail("trained again on --resume"))
    quantize_cli(toy_llama, out, *W2, *E2E, "--resume")
    uninterrupted = _tensors(signround_and_e2e[1])
    resumed = _tensors(out)
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name
    assert json.loads((out / "quantize_report.json").read_text())["e2e"]["resumed"] is True


def test_rtn_codes_can_be_tuned_end_to_end(toy_llama, tmp_path):
    rtn = quantize_cli(toy_llama, tmp_path / "rtn", "--bits", "2", "--group_size", "32", "--iters", "0")
    tuned = quantize_cli(toy_llama, tmp_path / "rtn_e2e", "--bits", "2", "--group_size", "32", "--iters", "0",
                         "--nsamples", "8", "--seqlen", "64", *E2E, "--e2e_lr", "1e-2")
    a, b = _tensors(rtn), _tensors(tuned)
    assert all(torch.equal(a[n], b[n]) for n in a if n.endswith(".qweight"))
    tokens = calibration_tokens(load_tokenizer(toy_llama), None, 8, 64, 42)
    # measured 5.36e-3 -> 2.41e-3
    assert _kl_to_original(toy_llama, tuned, tokens) < 0.7 * _kl_to_original(toy_llama, rtn, tokens)


@pytest.mark.parametrize("flags, message", [
    (("--e2e_epochs", "-1"), "--e2e_epochs (-1) must be >= 0"),
    (("--e2e_epochs", "1", "--e2e_lr", "0"), "--e2e_lr (0.0) > 0"),
    (("--recipe", "rtn", "--e2e_epochs", "1"), "--recipe rtn has no calibration set"),
    (("--recipe", "rtn", "--iters", "5"), "SignRound and end-to-end scale tuning need --nsamples"),
    (("--iters", "-3"), "--iters (-3) must be >= 0"),
    (("--e2e_nsamples", "64"), "needs --e2e_epochs >= 1"),
])
def test_bad_e2e_settings_are_refused_before_any_output(toy_llama, tmp_path, capsys, flags, message):
    out = tmp_path / "never"
    assert main(["--model", str(toy_llama), "--output", str(out), "--device", "cpu", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "never.partial").exists()


def test_out_of_memory_keeps_the_signround_result_and_says_how_to_go_on(toy_llama, tmp_path, capsys, monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(e2e, "train_scales", no_memory)
    out = tmp_path / "ckpt"
    assert main(["--model", str(toy_llama), "--output", str(out), "--device", "cpu", *W2, *E2E]) == 2
    err = capsys.readouterr().err
    assert "ran out of device memory" in err and "--e2e_batch_size" in err and str(tmp_path / "ckpt.partial") in err
    monkeypatch.undo()
    quantize_cli(toy_llama, out, *W2, "--resume")  # the stage turned off: the blocks are not tuned again
    report = json.loads((out / "quantize_report.json").read_text())
    assert "e2e" not in report and all(block.get("resumed") for block in report["blocks"])


def test_the_bf16_path_cuda_takes_also_lowers_the_loss(toy_llama, tmp_path, monkeypatch):
    """CUDA runs the stage in bf16 (CI has no GPU): the same call in bf16 on the CPU trains and stays finite."""
    captured = {}

    def capture(*args, **kwargs):
        captured["args"] = args
        raise torch.OutOfMemoryError("stop here")

    monkeypatch.setattr(e2e, "train_scales", capture)
    assert main(["--model", str(toy_llama), "--output", str(tmp_path / "ckpt"), "--device", "cpu", "--bits", "2",
                 "--group_size", "32", "--iters", "0", "--nsamples", "8", "--seqlen", "64", *E2E]) == 2
    monkeypatch.undo()
    files, plan, writer, tokens, _, _, batch_size, device, seed = captured["args"]
    scales, report = e2e.train_scales(files, plan, writer, tokens, 3, 1e-2, batch_size, device, seed,
                                      dtype=torch.bfloat16)
    assert "discarded" not in report and len(scales) == 14
    assert report["kl_per_epoch"][-1] < 0.8 * report["kl_per_epoch"][0], report
    assert all(s.dtype == torch.float16 and bool(torch.isfinite(s).all()) for s in scales.values())


def test_more_calibration_sequences_for_the_stage_than_for_signround_generalize_better(
        toy_llama, signround_and_e2e, tmp_path):
    """``--e2e_nsamples``: the stage's own calibration set; judged on tokens neither stage calibrated on."""
    sr, tuned_on_8 = signround_and_e2e
    tuned_on_64 = quantize_cli(toy_llama, tmp_path / "e2e64", *W2, *E2E, "--e2e_nsamples", "64",
                               "--e2e_batch_size", "2")
    report = json.loads((tuned_on_64 / "quantize_report.json").read_text())
    assert report["e2e"]["sequences"] == 64 and report["e2e"]["steps"] == 3 * 32
    assert report["recipe"]["nsamples"] == 8  # SignRound kept its own 8
    config = json.loads((tuned_on_64 / "config.json").read_text())["quantization_config"]
    assert config["e2e_nsamples"] == 64 and config["nsamples"] == 8

    heldout = calibration_tokens(load_tokenizer(toy_llama), None, 8, 64, 7)
    kl = [_kl_to_original(toy_llama, ckpt, heldout) for ckpt in (sr, tuned_on_8, tuned_on_64)]
    assert kl[2] < 0.9 * kl[1] and kl[1] < kl[0], kl  # measured 2.40e-3, 2.34e-3, 1.98e-3
