"""Where the M=1 kernel's time goes, on the H100 (no vLLM needed).

For each shape it times, with CUDA-graph replay over weight copies larger than L2 (kernel_common):
bf16 ``F.linear``; the gemv kernel in several tilings; a *load-only* kernel that streams the same words
with the same tiling and split-K but only XORs them (the memory floor of that access pattern); and the
gemv kernel re-reading one L2-resident copy (its cost with memory nearly free). ``--baseline FILE`` also
times the gemv kernel of an older ``triton_kernels.py`` (one with the current kernel arguments) in the same
run, for example ``git show 901ed0b:vllm_autoround/kernels/triton_kernels.py > /tmp/old_tk.py``: the kernel
that prefetched only the next block's words. ``--ncu`` instead runs two gemv launches for Nsight Compute to profile::

    python3 ci/gpu/probe_gemv.py --out $OUT/probe.json [--baseline /tmp/old_tk.py]
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

from kernel_common import (  # noqa: E402
    dense_copies,
    launching,
    load_triton_kernels,
    prepared,
    prepared_copies,
    random_checkpoint,
    reference_out,
    rel_err,
    time_graph,
    weight_bytes,
)

from vllm_autoround.kernels import launch  # noqa: E402
from vllm_autoround.kernels.launch import KernelConfig, run, split_plan  # noqa: E402
from vllm_autoround.kernels.layout import INTERLEAVE, block_k  # noqa: E402

# (bits, group size, sym, K, N)
SHAPES = ((4, 128, True, 4096, 14336), (4, 128, False, 4096, 14336), (3, 64, True, 4096, 14336),
          (2, 64, True, 4096, 14336), (8, 128, True, 4096, 14336), (4, 128, True, 14336, 4096),
          (4, 128, True, 4096, 6144), (4, 128, True, 8192, 28672))
# (BLOCK_N, WARP_N, waves, warps, prefetch); the first is the M=1 default (prefetch is off for 3 bits there)
TILINGS = ((128, 32, 4, 4, True), (128, 32, 8, 4, True), (128, 32, 4, 4, False), (256, 32, 8, 4, True),
           (64, 32, 6, 2, True), (128, 64, 4, 4, True), (128, 32, 16, 4, True))
BASELINE_TILINGS = 3  # the first ones, also timed with --baseline's kernel


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


def baseline_gemv(tk_old, x, p, cfg: KernelConfig):
    """The gemv kernel of an older ``triton_kernels.py`` (one with the current kernel arguments) through
    the current launcher."""
    with launching(tk_old):
        return launch.gemv(x, p, cfg)


def probe_shape(bits: int, group_size: int, sym: bool, k: int, n: int, tk_old=None, tilings=TILINGS,
                floor: bool = True) -> list[dict]:
    shape = f"W{bits} g{group_size} {'sym' if sym else 'asym'} {k}x{n}"
    ckpt = random_checkpoint(bits, group_size, sym, k, n)
    nbytes = weight_bytes(bits, group_size, k, n, sym)
    copies = prepared_copies(ckpt, nbytes)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    ref = reference_out(x.float(), ckpt)
    dense = dense_copies(n, k)
    rows = [{"shape": shape, "what": "bf16 F.linear",
             "us": time_graph([lambda w=w: torch.nn.functional.linear(x, w) for w in dense])}]
    rows[-1]["tb_s"] = n * k * 2 / rows[-1]["us"] / 1e6
    del dense
    if tk_old is not None:
        for block_n, warp_n, waves, warps, prefetch in tilings[:BASELINE_TILINGS]:
            cfg = KernelConfig("gemv", block_n=block_n, warp_n=warp_n, waves=waves, num_warps=warps, prefetch=prefetch)
            us = time_graph([lambda p=p, cfg=cfg: baseline_gemv(tk_old, x, p, cfg) for p in copies])
            rows.append({"shape": shape, "what": f"baseline gemv BN{block_n} WN{warp_n} waves {waves} warps {warps}"
                         f"{' prefetch' if prefetch else ''}", "us": us, "tb_s": nbytes / us / 1e6,
                         "rel_err": rel_err(baseline_gemv(tk_old, x, copies[0], cfg), ref)})
    for block_n, warp_n, waves, warps, prefetch in tilings:
        cfg = KernelConfig("gemv", block_n=block_n, warp_n=warp_n, waves=waves, num_warps=warps, prefetch=prefetch)
        us = time_graph([lambda p=p, cfg=cfg: run(x, p, cfg) for p in copies])
        rows.append({"shape": shape, "what": f"gemv BN{block_n} WN{warp_n} waves {waves} warps {warps}"
                     f"{' prefetch' if prefetch else ''}", "us": us,
                     "tb_s": nbytes / us / 1e6, "rel_err": rel_err(run(x, copies[0], cfg), ref)})
        if (block_n, warp_n, waves, warps, prefetch) == tilings[0] and floor:
            rows.append({"shape": shape, "what": f"gemv BN{block_n} waves {waves}, one L2-resident copy",
                         "us": time_graph([lambda cfg=cfg: run(x, copies[0], cfg)])})
    if bits != 3 and floor:
        num_blocks = copies[0].padded_in_features // block_k(bits)
        for block_n, waves, warps in ((128, 8, 4), (256, 8, 4)):
            tiles = -(-n // block_n)
            split, per = split_plan(num_blocks, tiles, waves, copies[0], x.device)
            sink = torch.empty(split, n, dtype=torch.int32, device="cuda")

            def load_only(p, tiles=tiles, split=split, per=per, block_n=block_n, warps=warps, sink=sink):
                load_only_kernel[(tiles, split)](p.qweight, sink, n, num_blocks, per, R=INTERLEAVE,
                                                 BLOCK_N=block_n, num_warps=warps)

            us = time_graph([lambda p=p: load_only(p) for p in copies])
            rows.append({"shape": shape, "what": f"load-only BN{block_n} waves {waves} warps {warps}", "us": us,
                         "tb_s": copies[0].qweight.numel() * 4 / us / 1e6})
    return rows


def run_for_ncu() -> None:
    """Three launches each of the M=1 default and of a 2-warp tiling, W4 g128 4096x14336, for a profiler."""
    from vllm_autoround.kernels.tuning import default_config

    ckpt = random_checkpoint(4, 128, True, 4096, 14336)
    p = prepared(ckpt)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    for cfg in (default_config(1, 14336, 4096, 4), KernelConfig("gemv", block_n=64, waves=6, num_warps=2,
                                                                  prefetch=True)):
        for _ in range(3):
            run(x, p, cfg)
    torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="write the rows here as JSON")
    p.add_argument("--ncu", action="store_true", help="only launch the kernels for a profiler")
    p.add_argument("--baseline", help="an older triton_kernels.py whose gemv kernel is timed alongside")
    p.add_argument("--tilings", help="BLOCK_N,WARP_N,waves,warps,prefetch(0/1) tuples separated by ';'")
    p.add_argument("--shapes", help="indices into SHAPES, comma-separated (default: all)")
    p.add_argument("--no_floor", action="store_true", help="skip the load-only and L2-resident rows")
    a = p.parse_args(argv)
    if a.ncu:
        run_for_ncu()
        return 0
    tk_old = load_triton_kernels(a.baseline) if a.baseline else None
    tilings = TILINGS
    if a.tilings:
        tilings = tuple(tuple(int(v) for v in t.split(",")) for t in a.tilings.split(";"))
        tilings = tuple((bn, wn, wv, w, bool(pf)) for bn, wn, wv, w, pf in tilings)
    shapes = [SHAPES[int(i)] for i in a.shapes.split(",")] if a.shapes else SHAPES
    rows = []
    for shape in shapes:
        for row in probe_shape(*shape, tk_old=tk_old, tilings=tilings, floor=not a.no_floor):
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
