"""The TMA-fed Gluon gemv (``kernels.tma_gemv``) against the Triton gemv and bf16 ``F.linear`` at M ≤ 4.

For each case and M it times, with CUDA-graph replay over weight copies larger than L2 (kernel_common):
bf16 ``F.linear``, the Triton gemv, the bucket's current default, and each TMA gemv tiling, through the
launcher serving uses (``kernels.launch.run``); every output is checked against a float32 reference (bf16,
and fp16 for the first TMA tiling). Needs an sm_90 GPU and Triton's Gluon, no vLLM::

    PYTHONPATH=. python3 ci/gpu/probe_tma_gemv.py --out $OUT/probe_tma_gemv.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import kernel_common as kc  # noqa: E402

from vllm_autoround.kernels.tuning import (  # noqa: E402
    TMA_GEMV_TILINGS,
    gemv_config,
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
    tilings = [TILINGS[int(i)] for i in a.tilings.split(",")] if a.tilings else TILINGS

    def configs(m, bits, default):
        triton_gemv = gemv_config(128, 4, prefetch=bits != 3)
        return [("default " + name(default), default), ("triton " + name(triton_gemv), triton_gemv)] + [
            (name(c), c) for c in tilings]

    kc.sweep(a, cases, [int(m) for m in a.ms.split(",")] if a.ms else [1], configs,
             check_fp16=lambda i, cfg: i == 2, bandwidth=True)


if __name__ == "__main__":
    main()
