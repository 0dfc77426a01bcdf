"""The register-operand gemm (``gemm16_kernel``) against gemm_kernel, dequantize + cuBLAS and bf16 ``F.linear``.

For each shape and M it times, with CUDA-graph replay over weight copies larger than L2
(kernel_common): bf16 ``F.linear``, the current default (``tuning.default_config``), gemm_kernel's default
for that M bucket, dequantize + cuBLAS from M=64 on, and each gemm16 tiling; every output is checked
against a float32 reference, in bf16 and (gemm16 only) fp16. ``--baseline FILE`` also times the gemm16
kernel of an older ``triton_kernels.py`` with each tiling. No vLLM needed::

    git show 2af8955:vllm_autoround/kernels/triton_kernels.py > /tmp/tk_int16.py
    PYTHONPATH=. python3 ci/gpu/probe_gemm16.py --out $OUT/probe_gemm16.json [--baseline /tmp/tk_int16.py]
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import kernel_common as kc  # noqa: E402

from vllm_autoround.kernels import launch  # noqa: E402
from vllm_autoround.kernels.launch import run  # noqa: E402
from vllm_autoround.kernels.tuning import DEQUANT, default_config, gemm16_config, m_bucket  # noqa: E402

SMALL_M = (16, 32, 64)
LARGE_M = (128, 256, 1024)
# (bits, group size, sym, K, N, Ms); gemm16 decodes 2-, 3- and 4-bit codes, sym and asym
CASES = ((4, 128, True, 4096, 14336, SMALL_M + LARGE_M), (4, 128, True, 14336, 4096, SMALL_M),
         (4, 128, True, 4096, 6144, SMALL_M), (4, 128, True, 8192, 28672, SMALL_M),
         (2, 64, True, 4096, 14336, SMALL_M + LARGE_M), (2, 64, True, 14336, 4096, (16, 64)),
         (3, 64, True, 4096, 14336, SMALL_M + (128,)), (3, 64, True, 14336, 4096, SMALL_M + (128,)),
         (3, 64, True, 4096, 6144, SMALL_M + (128,)), (3, 64, True, 8192, 28672, SMALL_M + (128,)),
         (4, 128, False, 4096, 14336, SMALL_M + (128,)), (4, 128, False, 14336, 4096, SMALL_M + (128,)),
         (4, 128, False, 8192, 28672, SMALL_M + (128,)), (2, 64, False, 4096, 14336, SMALL_M + (128,)),
         (3, 64, False, 4096, 14336, SMALL_M))
LARGE = (gemm16_config(64, 128, 1), gemm16_config(128, 128, 1, warps=8), gemm16_config(128, 128, 1, warps=8, stages=2),
         gemm16_config(256, 128, 1, warps=8, stages=2), gemm16_config(256, 64, 1, stages=2))
TILINGS = {16: (gemm16_config(16, 128, 4, stages=2), gemm16_config(16, 128, 4, stages=3), gemm16_config(16, 64, 4),
                gemm16_config(16, 128, 8, stages=3), gemm16_config(16, 128, 4, stages=4)),
           32: (gemm16_config(32, 64, 4, stages=2), gemm16_config(32, 64, 4), gemm16_config(32, 128, 4, stages=3),
                gemm16_config(64, 128, 2, stages=2)),
           64: (gemm16_config(64, 128, 2, stages=2), gemm16_config(64, 128, 2, stages=3), gemm16_config(64, 64, 4),
                gemm16_config(64, 128, 4, stages=3))} | {m: LARGE for m in LARGE_M}
# 3-bit: the tilings that compile for sm_90 without spilling and fit shared memory (docs/kernels.md)
TILINGS_W3 = {16: (gemm16_config(16, 128, 4), gemm16_config(16, 128, 4, stages=2), gemm16_config(16, 64, 4)),
              32: (gemm16_config(32, 128, 4, stages=2), gemm16_config(32, 64, 4), gemm16_config(32, 64, 4, stages=2)),
              64: (gemm16_config(64, 64, 2, stages=2), gemm16_config(64, 128, 2, warps=8, stages=2),
                   gemm16_config(32, 128, 4, stages=2)),
              128: (gemm16_config(64, 64, 1, stages=2), gemm16_config(64, 128, 1, warps=8, stages=2),
                    gemm16_config(64, 64, 2, stages=2))}


def name(cfg) -> str:
    if cfg.kind == "dequant":
        return "dequant+cuBLAS"
    return f"{cfg.kind} bm{cfg.block_m} bn{cfg.block_n} w{cfg.waves:g} warps{cfg.num_warps} st{cfg.num_stages}"


def load_baseline(path: str):
    """``--baseline``'s kernel module, marked with whether its gemm16 reads the words as int16 halves
    (before 901ed0b: ``[rows, 2N]``)."""
    module = kc.load_triton_kernels(path)
    # the 32-bit kernels split each loaded word themselves: `hi = (wa >> 16).to(tl.int16)`
    module.READS_INT16 = re.search(r">> 16\)\.to\(tl\.int16\)", Path(path).read_text()) is None
    module.HAS_ASYM = "z_ptr" in module.gemm16_kernel.arg_names
    if not module.HAS_ASYM:
        module.gemm16_kernel = _WithoutZeroPoints(module.gemm16_kernel)
    return module


class _WithoutZeroPoints:
    """A gemm16 kernel from before asym support (no ``z_ptr``) behind today's launcher, which passes the zero
    points as the fourth argument: the launch drops it (such kernels only run sym layers)."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel

    def __getitem__(self, grid):
        run = self.kernel[grid]
        return lambda x, w, s, z, *rest, **constexprs: run(x, w, s, *rest, **constexprs)


def baseline_gemm16(tk_old, x, p, cfg):
    """An older gemm16 kernel through the current launcher (its tiling, split-K and buffers)."""
    if tk_old.READS_INT16:
        p = replace(p, qweight=p.qweight.view(torch.int16))
    with kc.launching(tk_old):
        return launch.gemm16(x, p, cfg)


def run_for_ncu() -> None:
    """Four launches of the M=16 default on W4 g128 4096x14336, for Nsight Compute::

        ncu --clock-control none --kernel-name regex:gemm16 --launch-skip 2 --launch-count 1 --section \\
            SpeedOfLight --section WarpStateStats --section Occupancy python3 ci/gpu/probe_gemm16.py --ncu --out x
    """
    ck = kc.random_checkpoint(4, 128, True, 4096, 14336)
    p = kc.prepared(ck)
    x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)
    for _ in range(4):
        run(x, p, default_config(16, 14336, 4096, 4, True))
    torch.cuda.synchronize()


def main() -> None:
    ap = kc.probe_parser(budget=300)
    ap.add_argument("--baseline", help="an older triton_kernels.py whose gemm16 kernel is timed alongside")
    ap.add_argument("--min_m", type=int, default=1, help="skip smaller M")
    ap.add_argument("--max_m", type=int, default=1 << 30, help="skip larger M")
    ap.add_argument("--ncu", action="store_true", help="only launch the M=16 default a few times, for a profiler")
    a = ap.parse_args()
    if a.ncu:
        run_for_ncu()
        return
    tk_old = load_baseline(a.baseline) if a.baseline else None
    cases = [CASES[int(i)] for i in a.cases.split(",")] if a.cases else CASES
    t0 = time.time()
    rows = []
    for bits, gs, sym, k, n, ms in cases:
        if time.time() - t0 > a.budget:
            print(f"budget spent: W{bits} {k}x{n} skipped", flush=True)
            continue
        ck, nbytes, preps, dense = kc.case_weights(bits, gs, sym, k, n)
        for m in (m for m in ms if a.min_m <= m <= a.max_m):
            label = f"W{bits} g{gs} {'sym' if sym else 'asym'} {k}x{n} M={m}"
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            bf16 = kc.time_graph([lambda w=w, x=x: F.linear(x, w) for w in dense])
            rows.append(dict(shape=label, kernel="bf16 F.linear", us=bf16))
            mb = m_bucket(m)
            cfgs = [("default", default_config(mb, n, k, bits, sym)),
                    # asym with narrow groups keeps gemm_kernel: its default tiling
                    ("gemm_kernel default", default_config(mb, n, k, bits, sym=False, group_size=32))]
            cfgs += [("dequant+cuBLAS", DEQUANT)] if m >= 64 or bits == 3 else []
            tilings = TILINGS_W3[mb] if bits == 3 else TILINGS[mb]
            cfgs += [(name(c), c) for c in tilings if c.kind != "gemm16" or bits in (2, 3, 4)]
            runs = [(kernel, cfg, lambda x, p, cfg=cfg: run(x, p, cfg)) for kernel, cfg in cfgs]
            if tk_old is not None and (sym or tk_old.HAS_ASYM):
                runs += [("baseline " + name(c), c, lambda x, p, c=c: baseline_gemm16(tk_old, x, p, c))
                         for c in tilings if c.kind == "gemm16"]
            kc.time_runs(rows, label, x, ck, preps, runs, bf16, check_fp16=lambda i, cfg: cfg.kind == "gemm16",
                         tb_s=nbytes / 1e6)
        del preps, dense
        torch.cuda.empty_cache()
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
