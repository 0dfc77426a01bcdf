"""The Gluon large-M kernel (``kernels.wgmma_gemm``) against dequantize + cuBLAS and bf16 ``F.linear``.

For each shape and M ≥ 128 it times, with CUDA-graph replay over weight copies larger than L2
(kernel_common): bf16 ``F.linear``, dequantize + cuBLAS (the large-M default before this kernel), and each
Gluon tiling, through the launcher serving uses (``kernels.launch.run``), and the default for the M bucket;
every output is checked against a float32 reference (bf16, and fp16 for the default).
Needs an sm_90 GPU and Triton's Gluon, no vLLM::

    PYTHONPATH=. python3 ci/gpu/probe_wgmma.py --out $OUT/probe_wgmma.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import kernel_common as kc  # noqa: E402

from vllm_autoround.kernels.tuning import (  # noqa: E402
    DEQUANT,
    WGMMA_M64,
    WGMMA_M64_N64,
    WGMMA_M64_W8,
    WGMMA_TILINGS,
    wgmma_config,
)

MS = (128, 256, 512, 1024, 4096)  # --ms 64 times the M=64 candidate against gemm16
# (bits, group size, sym, K, N)
CASES = ((4, 128, True, 4096, 14336), (4, 128, True, 14336, 4096), (4, 128, True, 4096, 6144),
         (4, 128, True, 8192, 28672), (4, 128, False, 4096, 14336), (2, 64, True, 4096, 14336),
         (4, 32, True, 4096, 14336), (4, -1, False, 4096, 14336), (2, 32, False, 4096, 6144),
         (4, 128, True, 4096, 4096))
# the tuner's candidates plus neighbours (block_m, block_n, waves, warps, stages)
TILINGS = WGMMA_TILINGS + (wgmma_config(128, 128, 0), wgmma_config(64, 128, 1, stages=4),
                           wgmma_config(128, 128, 2, stages=3), WGMMA_M64,
                           # M=64 (indices 10-13): two warpgroups per 64 x 128 tile, 64 x 64 tiles (more programs per
                           # SM), deeper splits
                           wgmma_config(64, 128, 4, warps=8, stages=3), wgmma_config(64, 64, 2, warps=4, stages=3),
                           WGMMA_M64_W8, WGMMA_M64_N64,
                           # M=256 (indices 14-17): deeper x rings (x is re-read from L2 by every N tile)
                           wgmma_config(256, 128, 1, stages=3), wgmma_config(128, 128, 1, stages=4),
                           wgmma_config(128, 64, 1, warps=4, stages=4), wgmma_config(128, 128, 2, stages=4),
                           # 256 weight rows per program over four warpgroups (indices 18-22): half the x traffic
                           # from L2 of 128-row tiles
                           wgmma_config(128, 256, 1, warps=16), wgmma_config(128, 256, 1, warps=16, max_registers=128),
                           wgmma_config(64, 256, 1, warps=16, stages=3), wgmma_config(64, 256, 1, warps=8, stages=3),
                           wgmma_config(128, 256, 1, warps=16, stages=3))


def name(cfg) -> str:
    cap = f" r{cfg.max_registers}" if cfg.max_registers else ""
    return f"gluon {cfg.block_m}x{cfg.block_n} st{cfg.num_stages} w{cfg.num_warps} waves{cfg.waves:g}{cap}"


def main() -> None:
    ap = kc.probe_parser(budget=400)
    ap.add_argument("--ms", help="comma-separated M values (default: 128,256,512,1024,4096)")
    ap.add_argument("--tilings", help="indices into TILINGS, comma-separated (default: all)")
    a = ap.parse_args()
    cases = [CASES[int(i)] for i in a.cases.split(",")] if a.cases else CASES
    tilings = [TILINGS[int(i)] for i in a.tilings.split(",")] if a.tilings else TILINGS

    def configs(m, bits, default):
        return [("default " + (name(default) if default.kind == "wgmma" else default.kind), default),
                ("dequant+cuBLAS", DEQUANT)] + [(name(c), c) for c in tilings]

    kc.sweep(a, cases, [int(m) for m in a.ms.split(",")] if a.ms else MS, configs, check_fp16=lambda i, cfg: i == 0)


if __name__ == "__main__":
    main()
