"""Making small SignRound checkpoints in tests (also for the serving end-to-end test)."""

from __future__ import annotations

from pathlib import Path

# Small enough for a 2-core CI machine, large enough for SignRound to move well away from RTN.
FAST_TUNING = ("--nsamples", "8", "--seqlen", "64", "--batch_size", "8", "--iters", "40")


def quantize_cli(model: Path, output: Path, *flags: str) -> Path:
    """Run the quantizer CLI in-process on the CPU; returns the checkpoint directory."""
    from vllm_autoround.quantize.__main__ import main

    rc = main(["--model", str(model), "--output", str(output), "--device", "cpu", *flags])
    assert rc == 0, f"quantize exited with {rc}"
    return output


def make_signround_checkpoint(model: Path, output: Path, bits: int = 4, group_size: int = 32, *flags: str) -> Path:
    """A real SignRound checkpoint (iters > 0) of ``model``, tuned on the built-in calibration text."""
    return quantize_cli(model, output, "--bits", str(bits), "--group_size", str(group_size), *FAST_TUNING, *flags)
