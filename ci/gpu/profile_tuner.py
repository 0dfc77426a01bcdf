"""Where a SignRound iteration's time goes on the GPU (issue 3), against what its arithmetic needs.

Builds a one-block Llama-3-8B-shaped model (as ``ci/bench_tuner.py``), runs our quantizer on it with the
default batch (8 x 2048 tokens) and records a few iterations after warm-up with the torch profiler. Prints
the GPU time per iteration by kernel class (GEMM, attention, Triton-fused, other) with the busy share of
the iteration's wall time, the top kernels, and the FLOP floor of the block's matmuls at a given
TFLOP/s. No vLLM needed.

    python3 ci/gpu/profile_tuner.py --out $OUT/profile_tuner.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tuner import SHAPES, SMALL, random_model_run, timed_quantize  # noqa: E402
from profile_decode import busy_union  # noqa: E402

from vllm_autoround.quantize import iteration_graph  # noqa: E402

TOP_KERNELS = 15


def kernel_class(name: str) -> str:
    """A coarse class for a CUDA kernel name."""
    low = name.lower()
    if any(k in low for k in ("flash", "fmha", "attention", "sdpa")):  # before gemm: cuDNN's are "wgmma" too
        return "attention"
    if any(k in low for k in ("gemm", "sm90_xmma", "cutlass", "nvjet", "cublas", "matmul", "wgmma")):
        return "gemm"
    if low.startswith("triton"):
        return "triton"
    return "other"


def matmul_tflop(shape: dict, tokens: int) -> float:
    """Forward + input-gradient + weight-gradient FLOPs of one block's linears (q/k/v need no input
    gradient: their input is the block's own, which is not trained)."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    qkv, o, gate_up, down = h * (h + 2 * kv), h * h, 2 * h * i, i * h
    forward = 2 * tokens * (qkv + o + gate_up + down)
    return (3 * forward - 2 * tokens * qkv) / 1e12


class IterationProfiler:
    """Runs the torch profiler over tuning iterations ``[start, start + count)``, told where each iteration
    begins by ``iteration_graph.on_iteration`` (called before every iteration, replayed from a CUDA graph or
    not)."""

    def __init__(self, start: int, count: int) -> None:
        self.start, self.count = start, count
        self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                       torch.profiler.ProfilerActivity.CUDA])
        self.wall: list[float] = []

    def install(self) -> None:
        iteration_graph.on_iteration = self.before_iteration

    def uninstall(self) -> None:
        iteration_graph.on_iteration = None

    @staticmethod
    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def before_iteration(self, it: int) -> None:
        done = it  # iterations finished before this one
        if done == self.start:
            self.sync()
            self.prof.__enter__()
            self.t0 = time.perf_counter()
        elif done == self.start + self.count:
            self.sync()
            self.wall.append((time.perf_counter() - self.t0) / self.count)
            self.prof.__exit__(None, None, None)

    def summary(self, trace: Path) -> dict:
        self.prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
        kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
        per_class: dict[str, float] = defaultdict(float)
        per_name: dict[str, float] = defaultdict(float)
        for e in kernels:
            per_class[kernel_class(e["name"])] += float(e["dur"])
            per_name[e["name"][:100]] += float(e["dur"])
        busy = busy_union([(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in kernels])
        n = self.count
        return {"iterations": n, "wall_ms": round(self.wall[0] * 1e3, 2), "busy_ms": round(busy / n / 1e3, 2),
                "launches": round(len(kernels) / n, 1),
                "class_ms": {k: round(v / n / 1e3, 2) for k, v in sorted(per_class.items(), key=lambda kv: -kv[1])},
                "top_ms": [(name, round(v / n / 1e3, 3)) for name, v in
                           sorted(per_name.items(), key=lambda kv: -kv[1])[:TOP_KERNELS]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="write the summary here as JSON")
    p.add_argument("--small", action="store_true", help="tiny shapes on the CPU's GPU-less path: a smoke test")
    p.add_argument("--shape", choices=SHAPES, default="llama3_8b", help="the one block's shape")
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--profile_from", type=int, default=30)
    p.add_argument("--profile_count", type=int, default=5)
    p.add_argument("--tflops", type=float, default=800.0, help="dense bf16 rate for the FLOP floor")
    a = p.parse_args(argv)
    if a.iters <= a.profile_from + a.profile_count:
        p.error("--iters must exceed --profile_from + --profile_count (the profile ends when the next "
                "iteration starts)")
    device = "cpu" if a.small else "cuda"
    shape = SMALL if a.small else SHAPES[a.shape]
    work = Path(tempfile.mkdtemp(prefix="profile_tuner_"))
    args, seqlen, batch = random_model_run(work, shape, 1, device, a.small, token_seed=0)
    profiler = IterationProfiler(a.profile_from, a.profile_count)
    profiler.install()
    try:
        seconds, report = timed_quantize(work / "out", [*args, "--iters", str(a.iters)])
    finally:
        profiler.uninstall()
    summary = profiler.summary(work / "trace.json")
    floor = matmul_tflop(shape, batch * seqlen)
    summary.update(matmul_tflop=round(floor, 2), floor_ms_at_tflops=round(floor / a.tflops * 1e3, 2),
                   tflops=a.tflops, run_seconds=round(seconds, 1), compile=report["compile"],
                   block_tune_seconds=report["blocks"][0]["tune_seconds"])
    print(f"iteration: wall {summary['wall_ms']} ms, GPU busy {summary['busy_ms']} ms, "
          f"{summary['launches']} kernels; matmul floor {summary['floor_ms_at_tflops']} ms "
          f"({floor:.2f} TFLOP at {a.tflops:.0f} TFLOP/s)")
    print("by class (ms per iteration): " + ", ".join(f"{k} {v}" for k, v in summary["class_ms"].items()))
    for name, ms in summary["top_ms"]:
        print(f"  {ms:8.3f} ms  {name}")
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
