"""Tensor parallel on GPUs (issue 5): our plugin at TP=2 against TP=1 on the same checkpoint.

Needs two GPUs (the ``nvidia-h200-x2`` machine) and vLLM. Builds bench_serve's Llama-3-8B-shaped model with
4 layers, quantizes it with our RTN (W4 g128 asym, so zero points are sharded too), then runs vLLM's offline
engine with its defaults (torch.compile, CUDA graphs) at TP=1 and TP=2, each in its own process. It compares
greedy tokens (8 prompts x 32 tokens; the share before the first divergence, since a different reduction
order flips near-ties on a random model) and the first token's top-5 log-probabilities, and times one
129-token request after a warm-up one.

    python3 ci/gpu/tp2_check.py --work /tmp/tp2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import agreement, build_model, first_divergences, prompts  # noqa: E402

PROMPTS, TOKENS = 8, 32


def run_one(ckpt: Path, tp: int) -> dict:
    from vllm import SamplingParams

    from vllm_autoround.serving.plugin import checked_llm

    start = time.monotonic()
    llm = checked_llm(model=str(ckpt), quantization="auto_round", dtype="bfloat16", max_model_len=512,
                      gpu_memory_utilization=0.8, seed=0, tensor_parallel_size=tp,
                      compilation_config={"cudagraph_capture_sizes": [1, 8]})
    startup = time.monotonic() - start
    greedy = SamplingParams(max_tokens=TOKENS, ignore_eos=True, temperature=0.0)
    outs = llm.generate(prompts(PROMPTS, 7), greedy, use_tqdm=False)
    first = llm.generate(prompts(PROMPTS, 7), SamplingParams(max_tokens=1, logprobs=5, temperature=0.0),
                         use_tqdm=False)
    long = SamplingParams(max_tokens=129, ignore_eos=True, temperature=0.0)
    llm.generate(prompts(1, 3), long, use_tqdm=False)  # compiles and tunes this shape
    t0 = time.perf_counter()
    llm.generate(prompts(1, 3), long, use_tqdm=False)
    one_s = time.perf_counter() - t0
    return {"tp": tp, "startup_s": startup, "batch1_tok_s": 128 / one_s,
            "greedy": [list(o.outputs[0].token_ids) for o in outs],
            "top5": [{str(t): lp.logprob for t, lp in o.outputs[0].logprobs[0].items()} for o in first]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/tp2")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    ckpt = work / "w4g128asym"
    if args.one:
        (work / f"tp{args.one}.json").write_text(json.dumps(run_one(ckpt, args.one)))
        return 0
    build_model(work / "bf16", layers=4)
    if not (ckpt / "config.json").exists():
        subprocess.run([sys.executable, "-m", "vllm_autoround.quantize", "--model", str(work / "bf16"),
                        "--output", str(ckpt), "--bits", "4", "--group_size", "128", "--asym", "--iters", "0",
                        "--device", "cuda"], check=True)
    for tp in (1, 2):
        subprocess.run([sys.executable, __file__, "--work", str(work), "--one", str(tp)], check=True,
                       env=dict(os.environ, VLLM_LOGGING_LEVEL="WARNING"))
    r1, r2 = (json.loads((work / f"tp{tp}.json").read_text()) for tp in (1, 2))
    share, firsts = agreement(r1["greedy"], r2["greedy"]), first_divergences(r1["greedy"], r2["greedy"])
    diffs = [abs(a[t] - b[t]) for a, b in zip(r1["top5"], r2["top5"], strict=True) for t in a if t in b]
    same_top1 = sum(max(a, key=a.get) == max(b, key=b.get) for a, b in zip(r1["top5"], r2["top5"], strict=True))
    lines = ["| TP | startup s | batch-1 tok/s (129 tokens incl. prefill) |", "| --- | --- | --- |"]
    lines += [f"| {r['tp']} | {r['startup_s']:.0f} | {r['batch1_tok_s']:.0f} |" for r in (r1, r2)]
    lines.append(f"\nTP=2 vs TP=1 greedy, {PROMPTS} prompts x {TOKENS} tokens: {share:.1%} before the first "
                 f"divergence (per prompt: {firsts}); first token: same top-1 on {same_top1}/{PROMPTS} prompts, "
                 f"top-5 log-probabilities differ by at most {max(diffs):.3f} (mean {sum(diffs) / len(diffs):.4f})")
    table = "\n".join(lines)
    print(table)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "tp2.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
