"""Per-layer CPU timings of the plugin's CPU GEMM paths against their anchors, one run, one table.

For each (N, K) and M, in bf16, on random RTN checkpoint tensors:

* ``bf16``: ``F.linear`` on the dense weight;
* ``W4 ours``: ``kernels.cpu_int4.linear`` (torch's int4-packed GEMM up to OP_MAX_ROWS, dequantize above);
* ``W4 op``: torch's int4-packed GEMM at every M (what ``cpu_int4`` ran before its dequantized path);
* ``W8 ours``: ``kernels.cpu_int8.linear`` (two 4-bit halves through the int4 GEMM, dequantize above);
* ``W8 int8 op``: torch's int8 GEMM once per group summed in float32 up to 64 rows, dequantize + ``F.linear``
  above (the eleventh session's 8-bit path, rebuilt here as the anchor).

Each time is the median of ``--reps`` calls after two warm-up calls, in ms; the ratios are anchor time / ours (> 1:
ours faster); ``err`` is ours against a float64
matmul. Run it with nothing else busy on the machine (2 cores here)::

    python ci/bench_cpu_layers.py [--shapes 1536x576,576x1536,8192x2048] [--ms 1,16,64,128,512]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.kernels.helpers import checkpoint, rel_err  # noqa: E402
from vllm_autoround.format.packing import unpack_codes_and_zeros  # noqa: E402
from vllm_autoround.kernels import cpu_int4, cpu_int8  # noqa: E402


def median_ms(fn, reps: int) -> float:
    fn(), fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def int8_per_group(ck: dict, group_size: int, dtype: torch.dtype):
    """The eleventh session's W8 path: codes q − 128 per group, one int8-op call per group, asym terms after."""
    codes, zeros = unpack_codes_and_zeros(ck["qweight"], ck["qzeros"], 8, ck["zero_point_offset"])
    k, n = codes.shape
    per_group = (codes - 128).to(torch.int8).view(k // group_size, group_size, n).permute(0, 2, 1).contiguous()
    scales = ck["scales"].to(dtype)
    offsets = (zeros - 128).to(torch.int16)

    def linear(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 64:
            w = (per_group.to(torch.int16) - offsets.unsqueeze(-1)).to(dtype) * scales.unsqueeze(-1)
            return torch.nn.functional.linear(x, w.permute(1, 0, 2).reshape(n, k))
        xg = x.reshape(-1, k // group_size, group_size).transpose(0, 1).contiguous()
        y = torch.zeros(x.shape[0], n)
        for g in range(k // group_size):
            y += torch.ops.aten._weight_int8pack_mm(xg[g], per_group[g], scales[g])
        y -= xg.sum(-1, dtype=torch.float32).t() @ (offsets * scales.float())
        return y.to(x.dtype)

    return linear


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1536x576,576x1536,576x576,8192x2048", help="NxK, comma-separated")
    parser.add_argument("--ms", default="1,16,64,128,512")
    parser.add_argument("--group_size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    dtype, gs = torch.bfloat16, args.group_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}, "
          f"bf16, g{gs} sym, ms (median of {args.reps})\n")
    print("| N x K | M | bf16 | W4 ours | W4 op | W8 ours | W8 int8 op | W4 op / ours | W8 int8 op / ours "
          "| err W4 / W8 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        ck4, ck8 = checkpoint(4, gs, True, k, n, seed=1), checkpoint(8, gs, True, k, n, seed=2)
        w4 = cpu_int4.pack(ck4["qweight"], ck4["qzeros"], ck4["scales"], 4, gs, 1, dtype)
        w8 = cpu_int8.pack(ck8["qweight"], ck8["qzeros"], ck8["scales"], 8, gs, 1, dtype)
        dense = ck4["w64"].to(dtype)
        old8 = int8_per_group(ck8, gs, dtype)
        for m in (int(v) for v in args.ms.split(",")):
            x64 = torch.randn(m, k, dtype=torch.float64)
            x = x64.to(dtype)
            calls = {
                "bf16": partial(torch.nn.functional.linear, x, dense),
                "w4": partial(cpu_int4.linear, x, w4),
                "w4op": partial(cpu_int4.op_linear, x, w4.weight, w4.group_size, w4.scales_and_zeros),
                "w8": partial(cpu_int8.linear, x, w8),
                "w8old": partial(old8, x),
            }
            t = {name: median_ms(fn, args.reps) for name, fn in calls.items()}
            e4 = rel_err(cpu_int4.linear(x, w4), x64 @ ck4["w64"].t())
            e8 = rel_err(cpu_int8.linear(x, w8), x64 @ ck8["w64"].t())
            print(f"| {n}x{k} | {m} | {t['bf16']:.3f} | {t['w4']:.3f} | {t['w4op']:.3f} | {t['w8']:.3f} | "
                  f"{t['w8old']:.3f} | {t['w4op'] / t['w4']:.2f}x | {t['w8old'] / t['w8']:.2f}x | "
                  f"{e4:.1e} / {e8:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
