"""Where the M=1 kernel's time goes, on the H100 (no vLLM needed).

For each shape it times, with CUDA-graph replay over weight copies larger than L2 (kernel_common):
bf16 ``F.linear``; the gemv kernel in several tilings; a *load-only* kernel that streams the same words
with the same tiling and split-K but only XORs them (the memory floor of that access pattern); and the
gemv kernel re-reading one L2-resident copy (its cost with memory nearly free). ``--ncu`` instead runs
two gemv launches for Nsight Compute to profile::

    python3 ci/gpu/probe_gemv.py --out $OUT/probe.json
    ncu --clock-control none --kernel-name regex:gemv_kernel --launch-skip 2 --launch-count 2 \\
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \\
        --section SchedulerStats python3 ci/gpu/probe_gemv.py --ncu
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_common import copies_for, random_checkpoint, reference_out, rel_err, time_graph, weight_bytes  # noqa: E402

from vllm_autoround.kernels.launch import KernelConfig, _split, run  # noqa: E402
from vllm_autoround.kernels.layout import INTERLEAVE, block_k, prepare_weight  # noqa: E402

SHAPES = ((4, 128, 4096, 14336), (2, 64, 4096, 14336), (8, 128, 4096, 14336), (4, 128, 14336, 4096),
          (4, 128, 8192, 28672))
# (BLOCK_N, waves, warps); the first is the M=1 default
TILINGS = ((128, 8, 4), (256, 8, 4), (128, 8, 8), (256, 2, 4), (128, 4, 4), (128, 16, 4), (64, 8, 2))


@triton.jit
def load_only_kernel(w_ptr, out_ptr, N, num_blocks, blocks_per_split, R: tl.constexpr, BLOCK_N: tl.constexpr):
    """The gemv kernel's weight traffic (2/4/8-bit layout) without its arithmetic."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, R)
    acc = tl.zeros([R, BLOCK_N], dtype=tl.int32)
    b_start = pid_k * blocks_per_split
    for b in range(b_start, tl.minimum(b_start + blocks_per_split, num_blocks)):
        acc ^= tl.load(w_ptr + (b * R + offs_r)[:, None] * N + offs_n[None, :])
    tl.store(out_ptr + pid_k * N + offs_n, tl.sum(acc, 0))


def probe_shape(bits: int, group_size: int, k: int, n: int) -> list[dict]:
    shape = f"W{bits} g{group_size} {k}x{n}"
    ckpt = random_checkpoint(bits, group_size, True, k, n)
    nbytes = weight_bytes(bits, group_size, k, n, True)
    copies = [prepare_weight(ckpt["qweight"].clone(), ckpt["qzeros"], ckpt["scales"].clone(), bits=bits,
                             group_size=group_size, zero_point_offset=ckpt["zero_point_offset"])
              for _ in range(copies_for(nbytes))]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    ref = reference_out(x.float(), ckpt)
    dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(n * k * 2))]
    rows = [{"shape": shape, "what": "bf16 F.linear",
             "us": time_graph([lambda w=w: torch.nn.functional.linear(x, w) for w in dense])}]
    rows[-1]["tb_s"] = n * k * 2 / rows[-1]["us"] / 1e6
    del dense
    for block_n, waves, warps in TILINGS:
        cfg = KernelConfig("gemv", block_n=block_n, waves=waves, num_warps=warps)
        us = time_graph([lambda p=p, cfg=cfg: run(x, p, cfg) for p in copies])
        rows.append({"shape": shape, "what": f"gemv BN{block_n} waves {waves} warps {warps}", "us": us,
                     "tb_s": nbytes / us / 1e6, "rel_err": rel_err(run(x, copies[0], cfg), ref)})
        if (block_n, waves, warps) == TILINGS[0]:
            rows.append({"shape": shape, "what": f"gemv BN{block_n} waves {waves}, one L2-resident copy",
                         "us": time_graph([lambda cfg=cfg: run(x, copies[0], cfg)])})
    if bits != 3:
        num_blocks = copies[0].padded_in_features // block_k(bits)
        for block_n, waves, warps in TILINGS[:3]:
            tiles = -(-n // block_n)
            split, per = _split(num_blocks, tiles, waves, copies[0], x.device)
            sink = torch.empty(split, n, dtype=torch.int32, device="cuda")

            def load_only(p, tiles=tiles, split=split, per=per, block_n=block_n, warps=warps, sink=sink):
                load_only_kernel[(tiles, split)](p.qweight, sink, n, num_blocks, per, R=INTERLEAVE,
                                                 BLOCK_N=block_n, num_warps=warps)

            us = time_graph([lambda p=p: load_only(p) for p in copies])
            rows.append({"shape": shape, "what": f"load-only BN{block_n} waves {waves} warps {warps}", "us": us,
                         "tb_s": copies[0].qweight.numel() * 4 / us / 1e6})
    return rows


def run_for_ncu() -> None:
    ckpt = random_checkpoint(4, 128, True, 4096, 14336)
    p = prepare_weight(ckpt["qweight"], ckpt["qzeros"], ckpt["scales"], bits=4, group_size=128,
                       zero_point_offset=ckpt["zero_point_offset"])
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    for block_n, waves, warps in ((256, 8, 4), (128, 8, 8)):  # the two tilings of docs/kernels.md's ncu table
        cfg = KernelConfig("gemv", block_n=block_n, waves=waves, num_warps=warps)
        for _ in range(3):
            run(x, p, cfg)
    torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="write the rows here as JSON")
    p.add_argument("--ncu", action="store_true", help="only launch the kernels for a profiler")
    a = p.parse_args(argv)
    if a.ncu:
        run_for_ncu()
        return 0
    rows = []
    for shape in SHAPES:
        for row in probe_shape(*shape):
            rows.append(row)
            print(json.dumps(row), flush=True)
        torch.cuda.empty_cache()
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    print("\n| shape | what | µs | TB/s |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['shape']} | {r['what']} | {r['us']:.2f} | {r.get('tb_s', float('nan')):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
