"""Where decode time goes in vLLM: wall time vs GPU busy time per step, and the kernels that fill it.

`bench_serve.py` measures tokens/s; this says whether a step is bound by the GPU (kernels) or by the
host (scheduling, IPC, output handling: the GPU then idles between steps), and which kernels cost
most. Same model, checkpoints and engine settings as `bench_serve.py`; each configuration runs in its
own process with vLLM's torch profiler on, and each batch size is profiled over one greedy generate.

    python3 ci/gpu/profile_decode.py --work /tmp/bench_serve --configs ours_w4,builtin_w4,bf16 --batches 1,16
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_serve import (  # noqa: E402
    PROMPT_LEN,
    build_model,
    config_env,
    config_names,
    make_llm,
    prompts,
    quantize,
    save_tune_cache,
    seed_tune_cache_or_exit,
)

GEN_TOKENS = 128
TOP_KERNELS = 12


def busy_union(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by ``(start, end)`` intervals (kernels on several streams may overlap)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def summarize_trace(path: Path, steps: int) -> dict:
    """Per-step wall span, GPU busy time and top kernels (µs) from one Kineto trace."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        events = json.load(f)["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    if not kernels:
        return {"trace": path.name, "kernels": 0}
    spans = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in kernels]
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    per_name: dict[str, float] = defaultdict(float)
    # the same kernel runs every layer shape: its grid tells the shapes apart (calls per step = layers of that shape)
    per_site: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in kernels:
        per_name[e["name"][:90]] += float(e["dur"])
        per_site[(e["name"][:60], str(e.get("args", {}).get("grid", "?")))].append(float(e["dur"]))
    top = sorted(per_name.items(), key=lambda kv: -kv[1])[:TOP_KERNELS]
    sites = sorted(per_site.items(), key=lambda kv: -sum(kv[1]))[:2 * TOP_KERNELS]
    busy = busy_union(spans)
    launches: dict[str, int] = defaultdict(int)  # host-side launches: graph replays vs single kernels
    for e in events:
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "aunch" in e.get("name", ""):
            launches[e["name"]] += 1
    return {"trace": path.name, "kernels": len(kernels), "steps": steps, "wall_us_per_step": wall / steps,
            "busy_us_per_step": busy / steps, "idle_share": 1 - busy / wall,
            "launches_per_step": {k: v / steps for k, v in sorted(launches.items())},
            "top": [{"kernel": name, "us_per_step": us / steps} for name, us in top],
            "sites": [{"kernel": name, "grid": grid, "calls_per_step": len(d) / steps, "us_per_call": sum(d) / len(d),
                       "us_per_step": sum(d) / steps} for (name, grid), d in sites]}


def new_traces(trace_dir: Path, before: set, timeout: float = 180.0) -> list[Path]:
    """Trace files written since ``before``, smallest first, once their sizes stop changing (the
    workers may still be writing when ``stop_profile`` returns)."""
    deadline, sizes = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        files = sorted((p for p in trace_dir.iterdir() if p not in before and ".json" in p.name),
                       key=lambda p: p.stat().st_size)
        now = [p.stat().st_size for p in files]
        if files and now == sizes:
            return files
        sizes = now
        time.sleep(2.0)
    raise RuntimeError(f"no complete trace appeared in {trace_dir} within {timeout:.0f} s")


def profile_one(work: Path, name: str, batches: list[int]) -> dict:
    """Profile one configuration: one greedy generate per batch size, each in its own trace."""
    from vllm import SamplingParams

    trace_dir = work / "traces" / name
    trace_dir.mkdir(parents=True, exist_ok=True)
    llm = make_llm(work, name, profiler_config={"profiler": "torch", "torch_profiler_dir": str(trace_dir),
                                                "torch_profiler_with_stack": False,
                                                "torch_profiler_dump_cuda_time_total": False})
    greedy = SamplingParams(max_tokens=GEN_TOKENS, ignore_eos=True, temperature=0.0)
    result: dict = {"name": name, "batches": {}}
    for batch in batches:
        batch_prompts = prompts(batch, batch)
        t0 = time.perf_counter()
        llm.generate(batch_prompts, greedy, use_tqdm=False)  # warm-up, and the unprofiled wall time
        unprofiled = time.perf_counter() - t0
        before = set(trace_dir.iterdir())
        llm.start_profile(f"{name}_b{batch}")
        llm.generate(batch_prompts, greedy, use_tqdm=False)
        llm.stop_profile()
        traces = new_traces(trace_dir, before)
        summary = summarize_trace(traces[-1], GEN_TOKENS)  # the largest: the GPU worker's
        summary["unprofiled_us_per_step"] = unprofiled / GEN_TOKENS * 1e6
        result["batches"][str(batch)] = summary
        print(f"{name} batch {batch}: wall {summary.get('wall_us_per_step', 0):.0f} µs/step, GPU busy "
              f"{summary.get('busy_us_per_step', 0):.0f} µs/step, unprofiled {summary['unprofiled_us_per_step']:.0f}"
              " µs/step", flush=True)
        for p in traces:
            p.unlink()
    return result


def report(results: list[dict]) -> str:
    lines = ["| config | batch | unprofiled µs/step | profiled wall µs/step | GPU busy µs/step | GPU idle |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for batch, s in r["batches"].items():
            lines.append(f"| {r['name']} | {batch} | {s['unprofiled_us_per_step']:.0f} | "
                         f"{s.get('wall_us_per_step', 0):.0f} | {s.get('busy_us_per_step', 0):.0f} | "
                         f"{s.get('idle_share', 0):.0%} |")
    for r in results:
        for batch, s in r["batches"].items():
            lines += ["", f"{r['name']} batch {batch}: top kernels (µs per step)", "",
                      "| kernel | µs/step |", "| --- | --- |"]
            lines += [f"| `{t['kernel']}` | {t['us_per_step']:.1f} |" for t in s.get("top", [])]
            lines += ["", f"{r['name']} batch {batch}: by kernel and grid", "",
                      "| kernel | grid | calls/step | µs/call | µs/step |", "| --- | --- | --- | --- | --- |"]
            lines += [f"| `{t['kernel']}` | {t['grid']} | {t['calls_per_step']:.1f} | {t['us_per_call']:.1f} | "
                      f"{t['us_per_step']:.1f} |" for t in s.get("sites", [])]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/bench_serve")
    parser.add_argument("--configs", default="ours_w4,builtin_w4,bf16")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--tune-cache", type=Path, help="a tune_cache.json saved by an earlier run of this code "
                                                         "(bench_serve.py's --tune-cache)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    batches = [int(b) for b in args.batches.split(",")]
    out_dir = work / "profiles"
    if args.one:
        result = profile_one(work, args.one, batches)
        (out_dir / f"{args.one}.json").write_text(json.dumps(result, indent=1))
        return 0
    configs = config_names(parser, args.configs)
    if args.tune_cache is not None:
        seed_tune_cache_or_exit(parser, args.tune_cache)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_model(work / "bf16")
    quantize(work, configs)
    print(f"prompts of {PROMPT_LEN} tokens, {GEN_TOKENS} generated per profile", flush=True)
    for name in configs:
        (out_dir / f"{name}.json").unlink(missing_ok=True)  # a failed run must not report an earlier run's profile
        proc = subprocess.run([sys.executable, __file__, "--work", str(work), "--batches", args.batches,
                               "--one", name], env=config_env(name))
        if proc.returncode != 0:
            print(f"{name}: failed with exit code {proc.returncode}", flush=True)
    results = [json.loads((out_dir / f"{n}.json").read_text()) for n in configs if (out_dir / f"{n}.json").exists()]
    table = report(results)
    print(table)
    out = os.environ.get("OUT")
    if out:
        Path(out, "profile_decode.md").write_text(table + "\n")
        for r in results:
            Path(out, f"profile_{r['name']}.json").write_text(json.dumps(r, indent=1))
        save_tune_cache(Path(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
