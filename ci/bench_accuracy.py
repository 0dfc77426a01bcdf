"""Accuracy benchmark: held-out perplexity, tuning time and peak memory of RTN, our SignRound (default and
light recipes, and default followed by one epoch of end-to-end scale tuning over 512 sequences) and
auto-round 0.16.1 (default recipe) on a real model, at W4 g128, W3 g64 and W2 g64.

Every method gets the same calibration tokens (the default recipe's 128 x 2048 from the built-in Brown
calibration split, seed 42; ours-e2e's stage also sees 384 more from the same split) and the same sym
scheme; where a group size does not divide a layer's in_features, both tools get the same smaller group (our
planner's fallback, passed to auto-round as its ``layer_config``). Perplexity is measured once per method by
one evaluator: the Hugging Face model with the method's dequantized (ours) or fake-quantized (auto-round)
weights, on the held-out Brown genre (never calibrated on), 2048-token windows, bf16 on CUDA. Time is the
whole run (load, calibration, tuning, packing); peak memory is ``torch.cuda.max_memory_allocated`` during
the run, above what was allocated when it began (so what an earlier method left allocated in this process is
not counted).

Results accumulate in ``--results`` (JSON, rewritten atomically after each entry); entries already there
are skipped, so the benchmark can be spread over several calls of a time-limited machine and still prints
one table from one results file. Typical use on the H100 (see docs/benchmarks.md):

    python ci/smollm2.py /tmp/smollm2
    python ci/bench_accuracy.py --model /tmp/smollm2 --results $OUT/accuracy.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ci.bench_tuner import peak_gb, run_autoround, timed_quantize, write_token_dataset  # noqa: E402
from vllm_autoround.format.schema import LayerScheme  # noqa: E402
from vllm_autoround.quantize.calibration import calibration_tokens, load_tokenizer  # noqa: E402
from vllm_autoround.quantize.evaluate import (  # noqa: E402
    apply_weights,
    dequantized_weights,
    heldout_windows,
    load_model,
    perplexity,
)
from vllm_autoround.quantize.model_files import ModelFiles  # noqa: E402
from vllm_autoround.quantize.plan import build_plan, meta_model  # noqa: E402
from vllm_autoround.quantize.writer import write_json_atomic  # noqa: E402

SCHEMES = {"W4g128": (4, 128), "W3g64": (3, 64), "W2g64": (2, 64)}
METHODS = ("rtn", "ours-default", "ours-e2e", "ours-light", "auto-round")
RECIPE_FLAGS = {"rtn": ("--iters", "0"), "ours-default": ("--recipe", "default"),
                "ours-e2e": ("--recipe", "default", "--e2e_epochs", "1", "--e2e_nsamples", "512"),
                "ours-light": ("--recipe", "light")}


def run_ours(model_dir: Path, data: Path, bits: int, group_size: int, method: str, a: argparse.Namespace,
             device: str, work: Path) -> dict:
    out = work / f"{method}-w{bits}g{group_size}"
    argv = ["--model", str(model_dir), "--device", device, "--bits", str(bits), "--group_size", str(group_size),
            "--seed", str(a.seed), *RECIPE_FLAGS[method]]
    if method == "ours-e2e":  # the built-in corpus: the same first nsamples sequences, and more for --e2e_nsamples
        argv += shlex.split(a.e2e_flags)
    else:
        argv += ["--dataset", str(data)]
    if method != "rtn":
        argv += ["--nsamples", str(a.nsamples), "--seqlen", str(a.seqlen)]
        if a.iters is not None:
            argv += ["--iters", str(a.iters)]
    seconds, report = timed_quantize(out, argv)
    result = {"seconds": round(seconds, 2), "peak_gpu_gb": peak_gb(),
              "block_seconds": [b.get("seconds") for b in report.get("blocks", [])],
              "best_iter": [b.get("best_iter") for b in report.get("blocks", [])],
              "weights": dequantized_weights(out)}
    shutil.rmtree(out, ignore_errors=True)
    return result


def autoround_layer_config(model_dir: Path, bits: int, group_size: int) -> dict:
    """The layers our planner regroups, with the same group size, for auto-round."""
    plan = build_plan(meta_model(ModelFiles(model_dir).config), LayerScheme(bits, group_size, True))
    return {name: {"bits": bits, "group_size": size, "sym": True} for name, size in plan.regrouped.items()}


def run_method(method: str, scheme: str, model_dir: Path, tokens: torch.Tensor, data: Path,
               a: argparse.Namespace, device: str, work: Path) -> dict:
    bits, group_size = SCHEMES[scheme]
    if method != "auto-round":
        return run_ours(model_dir, data, bits, group_size, method, a, device, work)
    ns = argparse.Namespace(bits=bits, group_size=group_size, iters=200 if a.iters is None else a.iters,
                            nsamples=a.nsamples, seqlen=a.seqlen, batch_size=8, seed=a.seed)
    result = run_autoround(model_dir, tokens, ns, device, autoround_layer_config(model_dir, bits, group_size))
    if not result["same_tokens"]:
        raise RuntimeError("auto-round did not consume exactly the calibration tokens it was given")
    return {"seconds": result["total_seconds"], "peak_gpu_gb": result["peak_gpu_gb"],
            "block_seconds": result["block_seconds"], "weights": result["weights"]}


def evaluate(model: torch.nn.Module, windows: torch.Tensor, weights: dict | None, device: str, bs: int) -> float:
    """Perplexity with ``weights`` applied; the model visits the GPU only while it is scored."""
    original = {k: v.clone() for k, v in model.state_dict().items()} if weights else None
    if weights:
        apply_weights(model, weights)
    model.to(device)
    try:
        return perplexity(model, windows, bs)
    finally:
        model.to("cpu")
        if original:
            model.load_state_dict(original)


def print_table(results: dict) -> None:
    base = results.get("bf16", {}).get("ppl")
    print(f"\nheld-out perplexity, {results.get('info', {})}")
    print("| scheme | method | ppl | vs bf16 | time s | time / auto-round | peak GB | peak / auto-round |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    if base:
        print(f"| bf16 | - | {base:.3f} | | | | | |")
    for scheme in SCHEMES:
        rows = results.get(scheme, {})
        ref = rows.get("auto-round", {})
        for method in METHODS:
            r = rows.get(method)
            if not r:
                continue
            rel = f"{r['ppl'] / base - 1:+.2%}" if base else ""
            t_ratio = f"{r['seconds'] / ref['seconds']:.2f}x" if ref else ""
            m_ratio = f"{r['peak_gpu_gb'] / ref['peak_gpu_gb']:.2f}x" if ref and r["peak_gpu_gb"] else ""
            print(f"| {scheme} | {method} | {r['ppl']:.3f} | {rel} | {r['seconds']:.1f} | {t_ratio} | "
                  f"{r['peak_gpu_gb']} | {m_ratio} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face model directory (e.g. from ci/smollm2.py)")
    p.add_argument("--results", required=True, help="JSON file to accumulate results in (resumable)")
    p.add_argument("--schemes", default=",".join(SCHEMES), help=f"comma-separated subset of {list(SCHEMES)}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {list(METHODS)}")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--iters", type=int, help="override every recipe's iterations (smoke tests only)")
    p.add_argument("--eval_seqlen", type=int, default=2048)
    p.add_argument("--eval_samples", type=int, help="at most this many perplexity windows (default: all)")
    p.add_argument("--eval_bs", type=int, default=4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--e2e_flags", default="", help="more flags for ours-e2e, e.g. '--e2e_lr 1e-2'")
    p.add_argument("--deadline", type=float, help="start no new entry after this many seconds")
    a = p.parse_args(argv)
    schemes, methods = a.schemes.split(","), a.methods.split(",")
    for name in schemes + methods:
        if name not in SCHEMES and name not in METHODS:
            p.error(f"unknown scheme or method {name!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir, results_path = Path(a.model), Path(a.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["info"] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                       "torch": torch.__version__, "model": str(model_dir), "nsamples": a.nsamples,
                       "seqlen": a.seqlen, "eval_seqlen": a.eval_seqlen, "seed": a.seed,
                       "ours-e2e": " ".join(RECIPE_FLAGS["ours-e2e"] + tuple(shlex.split(a.e2e_flags)))}

    tok = load_tokenizer(model_dir)
    tokens = calibration_tokens(tok, None, a.nsamples, a.seqlen, a.seed)
    windows = heldout_windows(tok, a.eval_seqlen, a.eval_samples)
    results["info"]["eval_tokens"] = int(windows.numel())
    work = Path(tempfile.mkdtemp(prefix="bench_accuracy."))
    data = write_token_dataset(tokens, work / "calibration.jsonl")
    model = load_model(model_dir, "cpu", torch.bfloat16 if device == "cuda" else torch.float32)
    try:
        if "bf16" not in results:
            results["bf16"] = {"ppl": evaluate(model, windows, None, device, a.eval_bs)}
            write_json_atomic(results_path, results)
        for scheme in schemes:
            for method in methods:
                if method in results.get(scheme, {}):
                    continue
                if a.deadline and time.perf_counter() - started > a.deadline:
                    print(f"deadline: {scheme} {method} left for the next call", flush=True)
                    continue
                print(f"== {scheme} {method}", flush=True)
                run = run_method(method, scheme, model_dir, tokens, data, a, device, work)
                run["ppl"] = evaluate(model, windows, run.pop("weights"), device, a.eval_bs)
                results.setdefault(scheme, {})[method] = run
                write_json_atomic(results_path, results)
                print(f"   ppl {run['ppl']:.3f}, {run['seconds']:.1f} s, peak {run['peak_gpu_gb']} GB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
