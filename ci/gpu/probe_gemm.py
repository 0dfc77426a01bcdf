"""Tensor-core gemm tilings at M = 16-256 on the H100, against bf16 ``F.linear`` (no vLLM needed).

For each (scheme, shape, M) it times, with CUDA-graph replay over weight copies larger than L2
(kernel_common), bf16 ``F.linear``, the measured default of that M bucket (``tuning.default_config``)
and each candidate tiling, and checks every output against a float32 reference. It is the sweep behind
the gemm defaults and candidates in ``kernels/tuning.py`` (a tiling that does not fit in shared memory is
reported as an error row)::

    PYTHONPATH=. python3 ci/gpu/probe_gemm.py --out $OUT/probe_gemm.json [--ms 16,32,64]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_common import (  # noqa: E402
    dense_copies,
    prepared_copies,
    random_checkpoint,
    reference_out,
    rel_err,
    time_graph,
    weight_bytes,
)

from vllm_autoround.kernels.launch import KernelConfig, run  # noqa: E402
from vllm_autoround.kernels.tuning import DEQUANT, default_config, gemm_config, m_bucket  # noqa: E402

# (bits, group size, sym, K, N)
SHAPES = ((4, 128, True, 4096, 14336), (4, 128, True, 14336, 4096), (4, 128, True, 4096, 6144),
          (4, 128, True, 8192, 28672), (4, 128, False, 4096, 14336), (2, 64, True, 4096, 14336),
          (2, 64, True, 14336, 4096), (3, 64, True, 4096, 14336), (3, 64, True, 14336, 4096),
          (8, 128, True, 4096, 14336), (8, 128, True, 14336, 4096))
# Two warps cannot form a warp group, so those tilings use the Ampere-style mma instead of wgmma.
TILINGS = (gemm_config(16, 128, 4, w_first=True), gemm_config(16, 64, 4, w_first=True),
           gemm_config(16, 128, 4, warps=2, w_first=True), gemm_config(32, 128, 1, w_first=True),
           gemm_config(64, 128, 2), gemm_config(64, 64, 2), DEQUANT)


def config_name(cfg: KernelConfig) -> str:
    if cfg.kind == "dequant":
        return "dequant + cuBLAS"
    return (f"bm{cfg.block_m} bn{cfg.block_n} w{cfg.waves:g} warps{cfg.num_warps} st{cfg.num_stages}"
            f"{' wf' if cfg.w_first else ''}{' pf' if cfg.prefetch else ''}")


def probe_shape(bits: int, gs: int, sym: bool, k: int, n: int, m: int, tilings) -> list[dict]:
    ck = random_checkpoint(bits, gs, sym, k, n)
    nbytes = weight_bytes(bits, gs, k, n, sym)
    preps = prepared_copies(ck, nbytes)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    ref = reference_out(x, ck)
    label = f"W{bits} g{gs} {'sym' if sym else 'asym'} {k}x{n} M={m}"
    dense = dense_copies(n, k)
    rows = [{"shape": label, "kernel": "bf16 F.linear", "us": time_graph([lambda w=w: F.linear(x, w) for w in dense])}]
    del dense
    cfgs = [("default", default_config(m_bucket(m), n, k, bits))]
    cfgs += [(config_name(c), c) for c in tilings if c.block_m <= 2 * m or c.kind != "gemm"]
    for name, cfg in cfgs:
        try:
            err = rel_err(run(x, preps[0], cfg), ref)
            us = time_graph([lambda p=p, cfg=cfg: run(x, p, cfg) for p in preps])
        except Exception as exc:  # noqa: BLE001 - a tiling that does not fit (shared memory) is reported
            rows.append({"shape": label, "kernel": name, "error": str(exc)[:200]})
            continue
        rows.append({"shape": label, "kernel": name, "us": us, "rel_err": err, "TB/s": nbytes / us / 1e6,
                     "x_bf16": rows[0]["us"] / us})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="write the rows here as JSON")
    p.add_argument("--ms", default="16,64", help="M values, comma-separated")
    p.add_argument("--shapes", help="indices into SHAPES, comma-separated (default: all)")
    args = p.parse_args()
    shapes = [SHAPES[int(i)] for i in args.shapes.split(",")] if args.shapes else SHAPES
    rows: list[dict] = []
    for shape in shapes:
        for m in (int(v) for v in args.ms.split(",")):
            for row in probe_shape(*shape, m, TILINGS):
                rows.append(row)
                extra = (f"{row['us']:8.2f} µs  {row.get('x_bf16', 1):.2f}x bf16  err {row.get('rel_err', 0):.1e}"
                         if "us" in row else row["error"])
                print(f"{row['shape']:32s} {row['kernel']:36s} {extra}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
