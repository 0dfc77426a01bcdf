"""One quantization run: read the model, plan, quantize (RTN or SignRound), write the checkpoint."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vllm_autoround import __version__
from vllm_autoround.format.schema import LayerScheme
from vllm_autoround.quantize.block_io import check_blocks_readable
from vllm_autoround.quantize.calibration import calibration_tokens, load_tokenizer
from vllm_autoround.quantize.model_files import ModelFiles, locate_model
from vllm_autoround.quantize.plan import build_plan, meta_model, parse_layer_config, plan_warnings
from vllm_autoround.quantize.recipes import Recipe, resolve
from vllm_autoround.quantize.rtn import quantize_rtn
from vllm_autoround.quantize.writer import CheckpointWriter, write_json_atomic

REPORT_NAME = "quantize_report.json"


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    return resolve(args.recipe, iters=args.iters, nsamples=args.nsamples, seqlen=args.seqlen,
                   batch_size=args.batch_size, lr=args.lr, minmax_lr=args.minmax_lr,
                   e2e_epochs=getattr(args, "e2e_epochs", None), e2e_lr=getattr(args, "e2e_lr", None),
                   e2e_nsamples=getattr(args, "e2e_nsamples", None))


def run_signature(args: argparse.Namespace, recipe: Recipe, model_dir: Path) -> dict[str, Any]:
    """Settings that must match for ``--resume`` to continue a run (a Hub model's snapshot included).

    The end-to-end stage's settings are left out: a run may resume with that stage changed or turned off
    (e2e.tune_scales_end_to_end refuses only a saved stage of other settings)."""
    block_recipe = {k: v for k, v in vars(recipe).items() if not k.startswith("e2e_")}
    return {"model": str(model_dir.resolve()), "bits": args.bits, "group_size": args.group_size,
            "sym": not args.asym, "layer_config": args.layer_config, "quant_lm_head": args.quant_lm_head,
            "recipe": block_recipe, "seed": args.seed,
            "dataset": args.dataset, "gradient_accumulate_steps": args.gradient_accumulate_steps}


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return name


def check_eval_args(args: argparse.Namespace) -> None:
    if getattr(args, "eval", None) is None:
        return
    if args.eval_seqlen < 2 or args.eval_bs < 1 or (args.eval_samples is not None and args.eval_samples < 1):
        raise ValueError(f"--eval_seqlen ({args.eval_seqlen}) must be >= 2, --eval_bs ({args.eval_bs}) and "
                         f"--eval_samples ({args.eval_samples}) >= 1")


def check_recipe_args(args: argparse.Namespace, recipe: Recipe) -> None:
    if recipe.iters < 0:
        raise ValueError(f"--iters ({recipe.iters}) must be >= 0 (0 = RTN)")
    if recipe.e2e_epochs < 0 or not recipe.e2e_lr > 0:
        raise ValueError(f"--e2e_epochs ({recipe.e2e_epochs}) must be >= 0 and --e2e_lr ({recipe.e2e_lr}) > 0")
    if recipe.e2e_nsamples is not None and (recipe.e2e_nsamples < 1 or not recipe.e2e_epochs):
        raise ValueError(f"--e2e_nsamples ({recipe.e2e_nsamples}) must be >= 1 and needs --e2e_epochs >= 1 (the "
                         f"end-to-end stage it sizes is off)")
    if (recipe.iters or recipe.e2e_epochs) and min(recipe.nsamples, recipe.seqlen) < 1:
        raise ValueError(f"--recipe {args.recipe} has no calibration set (nsamples {recipe.nsamples}, seqlen "
                         f"{recipe.seqlen}); SignRound and end-to-end scale tuning need --nsamples and --seqlen")
    if recipe.iters and min(recipe.batch_size, getattr(args, "gradient_accumulate_steps", 1)) < 1:
        raise ValueError("--batch_size and --gradient_accumulate_steps must be positive")


def quantize(args: argparse.Namespace) -> Path:
    """Run one quantization; everything that can be checked is checked before ``OUTPUT.partial`` exists."""
    started = time.monotonic()
    files = ModelFiles(locate_model(args.model))
    recipe = recipe_from_args(args)
    scheme = LayerScheme(bits=args.bits, group_size=args.group_size, sym=not args.asym)
    model = meta_model(files.config)
    plan = build_plan(model, scheme, parse_layer_config(args.layer_config), args.quant_lm_head)
    for line in plan_warnings(plan):
        print(f"warning: {line}", file=sys.stderr)
    device = resolve_device(args.device)
    check_eval_args(args)
    check_recipe_args(args, recipe)
    if recipe.iters:
        check_blocks_readable(files, model, plan.block_prefix)
    tokens = e2e_tokens = None
    if recipe.iters or recipe.e2e_epochs:
        tokenizer = load_tokenizer(files.root)
        tokens = e2e_tokens = calibration_tokens(tokenizer, args.dataset, recipe.nsamples, recipe.seqlen, args.seed)
        if recipe.e2e_epochs and recipe.e2e_nsamples not in (None, recipe.nsamples):
            e2e_tokens = calibration_tokens(tokenizer, args.dataset, recipe.e2e_nsamples, recipe.seqlen, args.seed)
    writer = CheckpointWriter(args.output, resume=args.resume, run_signature=run_signature(args, recipe, files.root))
    if not recipe.e2e_epochs:
        from vllm_autoround.quantize.e2e import refuse_to_drop_saved_stage

        refuse_to_drop_saved_stage(writer)
    report: dict[str, Any] = {"method": "rtn" if recipe.iters == 0 else "signround", "recipe": vars(recipe)}
    if recipe.iters:
        from vllm_autoround.quantize.signround import tune_model

        report.update(tune_model(files, plan, writer, recipe, args, tokens))
    else:
        quantize_rtn(files, plan, writer, device)
    if recipe.e2e_epochs:
        from vllm_autoround.quantize.e2e import tune_scales_end_to_end

        report["e2e"] = tune_scales_end_to_end(files, plan, writer, e2e_tokens, recipe.e2e_epochs, recipe.e2e_lr,
                                               getattr(args, "e2e_batch_size", 4), device, args.seed)
    metadata = dict(autoround_version=f"vllm-autoround-{__version__}", iters=recipe.iters)
    if recipe.iters:
        metadata.update(nsamples=recipe.nsamples, seqlen=recipe.seqlen, batch_size=recipe.batch_size,
                        lr=recipe.lr, minmax_lr=recipe.minmax_lr)
    if recipe.e2e_epochs:
        metadata.update(e2e_epochs=recipe.e2e_epochs, e2e_lr=recipe.e2e_lr, e2e_nsamples=e2e_tokens.shape[0])
    quant_config = plan.quant_config(**metadata).to_dict()
    config = dict(files.config, quantization_config=quant_config)
    report["seconds"] = round(time.monotonic() - started, 3)
    report["skipped_layers"] = plan.skipped
    report["regrouped_layers"] = plan.regrouped
    report["not_linear_weights"] = {"per_block": plan.not_linear, "share": round(plan.not_linear_share, 4)}
    output = writer.finalize(config, files.auxiliary_files(),
                             {"quantization_config.json": quant_config, REPORT_NAME: report})
    if getattr(args, "eval", None) == "ppl":
        from vllm_autoround.quantize.evaluate import evaluate_ppl

        report["eval"] = evaluate_ppl(files.root, output, device, args.eval_seqlen, args.eval_samples, args.eval_bs)
        write_json_atomic(output / REPORT_NAME, report)
        ev = report["eval"]
        print(f"held-out perplexity ({ev['windows']} x {ev['seqlen']} tokens): original {ev['ppl_original']:.4f}, "
              f"quantized {ev['ppl_quantized']:.4f} ({ev['ppl_quantized'] / ev['ppl_original'] - 1:+.2%})")
    return output
