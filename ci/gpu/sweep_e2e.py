"""Sweep end-to-end stage settings (quantize/e2e.py) from one SignRound checkpoint: held-out perplexity of each.

SignRound runs once (``--e2e_epochs 0``); every variant then copies its written units into a fresh
``CheckpointWriter`` and runs the package's own stage on them (``tune_scales_end_to_end``), exactly as
``--e2e_epochs`` would after the last block, so the blocks are tuned once for all variants. Perplexity is
bench_accuracy's evaluator: the HF model with the dequantized weights, held-out Brown genre A, bf16.

Results accumulate in ``--results`` (JSON, rewritten after each variant; variants already there are
skipped), so a sweep spread over several calls of a time-limited machine still prints one table:

    python ci/gpu/sweep_e2e.py --model /tmp/smollm2 --results $OUT/sweep.json \\
        --variants '[{"nsamples": 512, "lr": 3e-3}, {"nsamples": 1024, "lr": 3e-3}, {"nsamples": 512, "epochs": 2}]'
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ci.bench_accuracy import evaluate  # noqa: E402
from vllm_autoround.format.schema import LayerScheme  # noqa: E402
from vllm_autoround.quantize.__main__ import main as quantize_main  # noqa: E402
from vllm_autoround.quantize.calibration import calibration_tokens, load_tokenizer  # noqa: E402
from vllm_autoround.quantize.e2e import tune_scales_end_to_end  # noqa: E402
from vllm_autoround.quantize.evaluate import dequantized_weights, heldout_windows, load_model  # noqa: E402
from vllm_autoround.quantize.model_files import ModelFiles  # noqa: E402
from vllm_autoround.quantize.plan import QuantPlan, build_plan, meta_model  # noqa: E402
from vllm_autoround.quantize.writer import CheckpointWriter, write_json_atomic, written_units  # noqa: E402

DEFAULTS = {"epochs": 1, "lr": 3e-3, "nsamples": 128, "batch_size": 4}


def variant_key(v: dict) -> str:
    return ",".join(f"{k}={v[k]}" for k in DEFAULTS)


def run_variant(base: Path, files: ModelFiles, plan: QuantPlan, tokenizer, variant: dict, a: argparse.Namespace,
                work: Path) -> dict:
    """The stage with ``variant``'s settings on a copy of ``base``'s units; its report (checkpoint in work/variant)."""
    out = work / "variant"
    for stale in (out, out.with_name("variant.partial")):  # a variant an earlier call left, finished or not
        shutil.rmtree(stale, ignore_errors=True)
    writer = CheckpointWriter(out)
    for unit, shard in written_units(base).items():
        writer.write_unit(unit, load_file(str(shard)))
    tokens = calibration_tokens(tokenizer, None, variant["nsamples"], a.seqlen, a.seed)
    report = tune_scales_end_to_end(files, plan, writer, tokens, variant["epochs"], variant["lr"],
                                    variant["batch_size"], "cuda" if torch.cuda.is_available() else "cpu", a.seed)
    writer.finalize(json.loads((base / "config.json").read_text()), [], {})
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--variants", required=True, help=f"JSON list of objects; keys and defaults {DEFAULTS}")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group_size", type=int, default=128)
    p.add_argument("--asym", action="store_true")
    p.add_argument("--recipe", default="default", help="the SignRound checkpoint's recipe")
    p.add_argument("--seqlen", type=int, default=2048, help="calibration sequence length of both stages")
    p.add_argument("--quantize_flags", default="", help="more flags for the SignRound run (e.g. '--iters 40')")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--eval_seqlen", type=int, default=2048)
    p.add_argument("--eval_samples", type=int, help="at most this many held-out windows (default: all)")
    p.add_argument("--eval_bs", type=int, default=4)
    p.add_argument("--work", help="keep the SignRound checkpoint here, to reuse on the next call (default: a "
                                  "temporary folder, removed at the end)")
    p.add_argument("--deadline", type=float, help="start no new variant after this many seconds")
    a = p.parse_args(argv)
    started = time.perf_counter()
    variants = [dict(DEFAULTS, **v) for v in json.loads(a.variants)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir, results_path = Path(a.model), Path(a.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="sweep_e2e."))
    work.mkdir(parents=True, exist_ok=True)
    base = work / "signround"
    flags = ["--bits", str(a.bits), "--group_size", str(a.group_size), "--recipe", a.recipe, "--seed", str(a.seed),
             "--seqlen", str(a.seqlen), "--e2e_epochs", "0", *(["--asym"] if a.asym else []),
             *shlex.split(a.quantize_flags)]
    tok = load_tokenizer(model_dir)
    files = ModelFiles(model_dir)
    plan = build_plan(meta_model(files.config), LayerScheme(a.bits, a.group_size, not a.asym))
    windows = heldout_windows(tok, a.eval_seqlen, a.eval_samples)
    model = load_model(model_dir, "cpu", torch.bfloat16 if device == "cuda" else torch.float32)
    try:
        if "bf16" not in results:
            results["bf16"] = evaluate(model, windows, None, device, a.eval_bs)
        start_key = f"signround {' '.join(flags)}"
        if not base.exists():
            t0 = time.perf_counter()
            if quantize_main(["--model", str(model_dir), "--output", str(base), "--device", device, "--resume",
                              *flags]) != 0:  # --resume: finish what an earlier call left
                raise SystemExit("the SignRound run failed")
            results[start_key] = {"seconds": round(time.perf_counter() - t0, 2)}
        if "ppl" not in results.setdefault(start_key, {"seconds": None}):  # None: made by an earlier call
            results[start_key]["ppl"] = evaluate(model, windows, dequantized_weights(base), device, a.eval_bs)
            write_json_atomic(results_path, results)
        print(f"start {start_key}: {results[start_key]}", flush=True)
        runs = results.setdefault(f"variants from {start_key}", {})
        for variant in variants:
            key = variant_key(variant)
            if key in runs:
                continue
            if a.deadline and time.perf_counter() - started > a.deadline:
                print(f"deadline: {key} left for the next call", flush=True)
                continue
            report = run_variant(base, files, plan, tok, variant, a, work)
            ppl = evaluate(model, windows, dequantized_weights(work / "variant"), device, a.eval_bs)
            runs[key] = {"ppl": ppl, "report": report}
            write_json_atomic(results_path, results)
            print(f"{key}: ppl {ppl:.3f} ({ppl / results['bf16'] - 1:+.2%}), {report['seconds']} s", flush=True)
    finally:
        shutil.rmtree(work if not a.work else work / "variant", ignore_errors=True)
    bf16 = results["bf16"]
    print(f"\nbf16 {bf16:.3f}; the 2% bar is {1.02 * bf16:.3f}")
    for start, runs in results.items():
        if start.startswith("variants from "):
            print(f"\n{start}\n| variant | ppl | vs bf16 | s | KL per epoch |\n|---|---|---|---|---|")
            for key, r in runs.items():
                rep = r["report"]
                print(f"| {key} | {r['ppl']:.3f} | {r['ppl'] / bf16 - 1:+.2%} | {rep['seconds']} | "
                      f"{rep['kl_per_epoch']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
