"""The TMA-fed Gluon gemv (``kernels.tma_gemv``) against the Triton gemv and bf16 ``F.linear`` at M ≤ 4.

For each case and M it times, with CUDA-graph replay over weight copies larger than L2 (kernel_common):
bf16 ``F.linear``, the Triton gemv, the bucket's current default, and each TMA gemv tiling, through the
launcher serving uses (``kernels.launch.run``); every output is checked against a float32 reference (bf16,
and fp16 for the first TMA tiling). Needs an sm_90 GPU and Triton's Gluon, no vLLM::

    PYTHONPATH=. python3 ci/gpu/probe_tma_gemv.py --out $OUT/probe_tma_gemv.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import kernel_common as kc  # noqa: E402

from vllm_autoround.kernels.launch import run  # noqa: E402
from vllm_autoround.kernels.tuning import (  # noqa: E402
    TMA_GEMV_TILINGS,
    default_config,
    gemv_config,
    m_bucket,
    tma_gemv_config,
)

# (bits, group size, sym, K, N)
CASES = ((4, 128, True, 4096, 14336), (4, 128, True, 14336, 4096), (4, 128, True, 4096, 6144),
         (4, 128, True, 8192, 28672), (2, 64, True, 4096, 14336), (8, 128, True, 4096, 14336),
         (4, 128, False, 4096, 14336), (2, 64, True, 14336, 4096), (4, 32, True, 4096, 14336),
         (4, -1, False, 4096, 6144), (2, 32, False, 4096, 6144), (4, 128, True, 4096, 1000))
TILINGS = TMA_GEMV_TILINGS + (tma_gemv_config(128, 4), tma_gemv_config(256, 2), tma_gemv_config(128, 4, stages=6),
                              tma_gemv_config(128, 4, warps=8), tma_gemv_config(256, 4, stages=3))


def name(cfg) -> str:
    if cfg.kind != "tma_gemv":
        return f"{cfg.kind} BN{cfg.block_n} waves{cfg.waves:g} w{cfg.num_warps}" + (" pf" if cfg.prefetch else "")
    return f"tma BN{cfg.block_n} waves{cfg.waves:g} w{cfg.num_warps} st{cfg.num_stages}"


def main() -> None:
    ap = kc.probe_parser(budget=300)
    ap.add_argument("--ms", help="comma-separated M values up to 4 (default: 1)")
    ap.add_argument("--tilings", help="indices into TILINGS, comma-separated (default: all)")
    a = ap.parse_args()
    cases = [CASES[int(i)] for i in a.cases.split(",")] if a.cases else CASES
    ms = [int(m) for m in a.ms.split(",")] if a.ms else [1]
    tilings = [TILINGS[int(i)] for i in a.tilings.split(",")] if a.tilings else TILINGS
    t0 = time.time()
    rows = []
    for bits, gs, sym, k, n in cases:
        if time.time() - t0 > a.budget:
            print(f"budget spent: W{bits} {k}x{n} skipped", flush=True)
            continue
        ck, nbytes, preps, dense = kc.case_weights(bits, gs, sym, k, n)
        for m in ms:
            label = f"W{bits} g{gs} {'sym' if sym else 'asym'} {k}x{n} M={m}"
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            bf16 = kc.time_graph([lambda w=w, x=x: F.linear(x, w) for w in dense])
            rows.append(dict(shape=label, kernel="bf16 F.linear", us=bf16))
            default = default_config(m_bucket(m), n, k, bits, sym, gs)
            triton_gemv = gemv_config(128, 4, prefetch=bits != 3)
            cfgs = [("default " + name(default), default), ("triton " + name(triton_gemv), triton_gemv)]
            cfgs += [(name(c), c) for c in tilings]
            runs = [(kernel, c, lambda x, p, c=c: run(x, p, c)) for kernel, c in cfgs]
            kc.time_runs(rows, label, x, ck, preps, runs, bf16, check_fp16=lambda i, cfg: i == 2,
                         tb_s=nbytes / 1e6)
        del preps, dense
        torch.cuda.empty_cache()
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
