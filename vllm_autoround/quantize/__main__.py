"""``python -m vllm_autoround.quantize``: quantize a Hugging Face model directory to the auto_round format."""

from __future__ import annotations

import argparse
import sys

from vllm_autoround.format.errors import FormatError
from vllm_autoround.quantize.recipes import RECIPES


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 batches or steps is a mistake, not a default)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vllm_autoround.quantize", description=__doc__)
    p.add_argument("--model", required=True,
                   help="Hugging Face model directory (safetensors weights), or a Hub id: org/name[@revision]")
    p.add_argument("--output", required=True, help="directory to create for the quantized checkpoint")
    p.add_argument("--bits", type=int, default=4, help="weight bits: 2, 3, 4 or 8 (default 4)")
    p.add_argument("--group_size", type=int, default=128, help="32, 64, 128 or -1 for per channel (default 128)")
    p.add_argument("--asym", action="store_true", help="asymmetric quantization (zero points)")
    p.add_argument("--layer_config", help="JSON object or file: layer name or regex -> {bits, group_size, sym}; "
                                          "bits 16 leaves a layer unquantized")
    p.add_argument("--quant_lm_head", action="store_true", help="also quantize lm_head (left alone by default)")
    p.add_argument("--recipe", default="default", choices=sorted(RECIPES), help="tuning preset (default: default)")
    p.add_argument("--iters", type=int, help="SignRound iterations per block; 0 = RTN")
    p.add_argument("--nsamples", type=positive_int, help="calibration samples")
    p.add_argument("--seqlen", type=positive_int, help="calibration sequence length")
    p.add_argument("--batch_size", type=positive_int, help="tuning batch size")
    p.add_argument("--gradient_accumulate_steps", type=positive_int, default=1, help="batches per optimizer step")
    p.add_argument("--lr", type=float, help="rounding learning rate (default 1/iters)")
    p.add_argument("--minmax_lr", type=float, help="min/max scale learning rate (default: lr)")
    p.add_argument("--e2e_epochs", type=int, help="after SignRound, epochs of end-to-end scale tuning over the "
                                                   "calibration set (default: the recipe's; 0 = off)")
    p.add_argument("--e2e_lr", type=float, help="end-to-end scale tuning learning rate (relative change per step)")
    p.add_argument("--e2e_nsamples", type=positive_int, help="calibration sequences of the end-to-end stage "
                                                             "(default: --nsamples; more generalize better)")
    p.add_argument("--e2e_batch_size", type=positive_int, default=4,
                   help="sequences per end-to-end step (bounds its activation memory; default 4)")
    p.add_argument("--dataset", help="calibration text: a .txt/.jsonl file or a folder of them (default built-in)")
    p.add_argument("--low_gpu_mem_usage", action="store_true", help="keep cached block inputs on the CPU")
    p.add_argument("--device", default="auto", help="tuning device: auto, cuda, cuda:N, cpu")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUTPUT.partial")
    p.add_argument("--eval", choices=["ppl"], help="after writing, measure held-out perplexity (built-in Brown "
                                                   "corpus, genre A) of the original and the quantized model")
    p.add_argument("--eval_seqlen", type=int, default=2048, help="perplexity window length (default 2048)")
    p.add_argument("--eval_samples", type=int, help="at most this many perplexity windows (default: all)")
    p.add_argument("--eval_bs", type=int, default=1, help="perplexity batch size (default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vllm_autoround.quantize.run import quantize

    try:
        output = quantize(args)
    except (FormatError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
