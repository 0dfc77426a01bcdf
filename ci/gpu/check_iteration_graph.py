"""The tuning loop with and without CUDA-graph replay on the GPU: same checkpoint, and how much faster.

Builds a random-weight model with ``--shape`` blocks (as ``ci/bench_tuner.py``), quantizes it twice on the
same calibration tokens and seed, first with ``VLLM_AUTOROUND_CUDA_GRAPH=0`` (plain loop), then with the
default (warm-up, one capture, replays), and compares every tensor of the two checkpoints and the blocks'
tuning times and peak memory. Two plain runs show the GPU's own run-to-run spread (on the H200 the plain
loop's later blocks differ between runs; its attention backward need not be deterministic), against which
the graph run's differences are read. The first run also pays torch.compile. No vLLM needed.

    python3 ci/gpu/check_iteration_graph.py --shape smollm2 --layers 4 --out $OUT/graph_check.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_tuner import SHAPES, SMALL, peak_gb, random_model_run, timed_quantize  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from vllm_autoround.quantize.iteration_graph import GRAPH_ENV  # noqa: E402


def allocated_gb() -> float | None:
    """What is still allocated after a run (the model and its caches should be gone): a leak shows here."""
    return round(torch.cuda.memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    """How many tensors are bit-identical, and the largest share of differing elements in any one."""
    if a.keys() != b.keys():
        raise ValueError(f"the checkpoints hold different tensors: {sorted(a.keys() ^ b.keys())[:5]}")
    differ = {k: float((a[k] != b[k]).float().mean()) for k in a if not torch.equal(a[k], b[k])}
    return {"tensors": len(a), "identical": len(a) - len(differ),
            "max_differing_share": max(differ.values(), default=0.0),
            "differing": sorted(differ, key=differ.get, reverse=True)[:8]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=SHAPES, default="smollm2")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--group_size", type=int, default=64)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--small", action="store_true", help="tiny shapes on the CPU (no graph there): a smoke test")
    p.add_argument("--out", help="write the results here as JSON")
    a = p.parse_args(argv)
    device = "cpu" if a.small else "cuda"
    shape = SMALL if a.small else SHAPES[a.shape]
    work = Path(tempfile.mkdtemp(prefix="graph_check_"))
    args, _, _ = random_model_run(work, shape, a.layers, device, a.small, token_seed=1)
    args += ["--iters", str(a.iters), "--group_size", str(a.group_size)]
    runs = {}
    for name, flag in (("plain_1", "0"), ("plain_2", "0"), ("graph", "1")):
        os.environ[GRAPH_ENV] = flag
        seconds, report = timed_quantize(work / name, args)
        gc.collect()
        runs[name] = {"seconds": round(seconds, 2), "peak_gpu_gb": peak_gb(), "left_allocated_gb": allocated_gb(),
                      "block_tune_seconds": [b["tune_seconds"] for b in report["blocks"]],
                      "cuda_graph": [b["cuda_graph"] for b in report["blocks"]],
                      "loss_best": [b["loss_best"] for b in report["blocks"]]}
        print(name, json.dumps(runs[name]), flush=True)
    os.environ.pop(GRAPH_ENV)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "shape": a.shape,
              "layers": a.layers, "iters": a.iters, **runs,
              **{f"{a}_vs_{b}": compare(checkpoint_tensors(work / a), checkpoint_tensors(work / b))
                 for a, b in (("plain_1", "plain_2"), ("plain_1", "graph"), ("plain_2", "graph"))}}
    for key in ("plain_1_vs_plain_2", "plain_1_vs_graph", "plain_2_vs_graph"):
        print(key, json.dumps(result[key]))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
