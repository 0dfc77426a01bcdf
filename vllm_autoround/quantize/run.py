"""One quantization run: read the model, plan, quantize (RTN or SignRound), write the checkpoint."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from vllm_autoround import __version__
from vllm_autoround.format.schema import LayerScheme
from vllm_autoround.quantize.model_files import ModelFiles
from vllm_autoround.quantize.plan import build_plan, meta_model, parse_layer_config
from vllm_autoround.quantize.recipes import Recipe, resolve
from vllm_autoround.quantize.rtn import quantize_rtn
from vllm_autoround.quantize.writer import CheckpointWriter

REPORT_NAME = "quantize_report.json"


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    return resolve(args.recipe, iters=args.iters, nsamples=args.nsamples, seqlen=args.seqlen,
                   batch_size=args.batch_size, lr=args.lr, minmax_lr=args.minmax_lr)


def run_signature(args: argparse.Namespace, recipe: Recipe) -> dict[str, Any]:
    """Settings that must match for ``--resume`` to continue a run."""
    return {"model": str(Path(args.model).resolve()), "bits": args.bits, "group_size": args.group_size,
            "sym": not args.asym, "layer_config": args.layer_config, "quant_lm_head": args.quant_lm_head,
            "recipe": vars(recipe) if hasattr(recipe, "__dict__") else str(recipe), "seed": args.seed,
            "dataset": args.dataset, "gradient_accumulate_steps": args.gradient_accumulate_steps}


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return name


def quantize(args: argparse.Namespace) -> Path:
    started = time.monotonic()
    files = ModelFiles(args.model)
    recipe = recipe_from_args(args)
    scheme = LayerScheme(bits=args.bits, group_size=args.group_size, sym=not args.asym)
    plan = build_plan(meta_model(files.config), scheme, parse_layer_config(args.layer_config), args.quant_lm_head)
    writer = CheckpointWriter(args.output, resume=args.resume, run_signature=run_signature(args, recipe))
    report: dict[str, Any] = {"method": "rtn" if recipe.iters == 0 else "signround", "recipe": vars(recipe)}
    if recipe.iters == 0:
        quantize_rtn(files, plan, writer, resolve_device(args.device))
    else:
        from vllm_autoround.quantize.signround import tune_model

        report.update(tune_model(files, plan, writer, recipe, args))
    metadata = dict(autoround_version=f"vllm-autoround-{__version__}", iters=recipe.iters)
    if recipe.iters:
        metadata.update(nsamples=recipe.nsamples, seqlen=recipe.seqlen, batch_size=recipe.batch_size,
                        lr=recipe.lr, minmax_lr=recipe.minmax_lr)
    quant_config = plan.quant_config(**metadata).to_dict()
    config = dict(files.config, quantization_config=quant_config)
    report["seconds"] = round(time.monotonic() - started, 3)
    report["skipped_layers"] = plan.skipped
    return writer.finalize(config, files.auxiliary_files(),
                           {"quantization_config.json": quant_config, REPORT_NAME: report})
