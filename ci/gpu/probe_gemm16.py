"""The register-operand gemm (``gemm16_kernel``) against gemm_kernel and bf16 ``F.linear`` at M = 16-128.

For each sym W4/W2 shape and M it times, with CUDA-graph replay over weight copies larger than L2
(kernel_common): bf16 ``F.linear``, gemm_kernel's default for that M bucket, the current default
(``tuning.default_config``) and each gemm16 tiling; every output is checked against a float32 reference,
in bf16 and (gemm16 only) fp16. No vLLM needed::

    PYTHONPATH=. python3 ci/gpu/probe_gemm16.py --out $OUT/probe_gemm16.json [--budget 300]
"""

from __future__ import annotations

import argparse
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
from vllm_autoround.kernels.tuning import default_config, gemm16_config, m_bucket  # noqa: E402

# (bits, group size, K, N, Ms); all sym: gemm16 decodes one shared zero point
CASES = ((4, 128, 4096, 14336, (16, 32, 64, 128)), (4, 128, 14336, 4096, (16, 32, 64)),
         (4, 128, 4096, 6144, (16, 32, 64)), (4, 128, 8192, 28672, (16, 32, 64)),
         (2, 64, 4096, 14336, (16, 32, 64, 128)), (2, 64, 14336, 4096, (16, 64)))
TILINGS = {16: (gemm16_config(16, 128, 4, stages=2), gemm16_config(16, 128, 4), gemm16_config(16, 64, 4)),
           32: (gemm16_config(32, 64, 4), gemm16_config(32, 64, 4, stages=2), gemm16_config(64, 128, 2)),
           64: (gemm16_config(64, 128, 2), gemm16_config(64, 128, 2, stages=2), gemm16_config(64, 64, 4)),
           128: (gemm16_config(64, 128, 2), gemm16_config(64, 128, 2, stages=2))}


def name(cfg) -> str:
    return f"{cfg.kind} bm{cfg.block_m} bn{cfg.block_n} w{cfg.waves:g} warps{cfg.num_warps} st{cfg.num_stages}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=300, help="seconds; later cases are skipped")
    a = ap.parse_args()
    t0 = time.time()
    rows = []
    for bits, gs, k, n, ms in CASES:
        if time.time() - t0 > a.budget:
            print(f"budget spent: W{bits} {k}x{n} skipped", flush=True)
            continue
        ck = kc.random_checkpoint(bits, gs, True, k, n)
        nbytes = kc.weight_bytes(bits, gs, k, n, True)
        preps = kc.prepared_copies(ck, nbytes)
        dense = kc.dense_copies(n, k)
        for m in ms:
            label = f"W{bits} g{gs} sym {k}x{n} M={m}"
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = kc.reference_out(x, ck)
            bf16 = kc.time_graph([lambda w=w, x=x: F.linear(x, w) for w in dense])
            rows.append(dict(shape=label, kernel="bf16 F.linear", us=bf16))
            old = default_config(m_bucket(m), n, k, bits, sym=False)  # asym keeps gemm_kernel's defaults
            cfgs = [("gemm_kernel default", old), ("default", default_config(m_bucket(m), n, k, bits))]
            cfgs += [(name(c), c) for c in TILINGS[m_bucket(m)]]
            base = None
            for kernel, cfg in cfgs:
                try:
                    err = kc.rel_err(run(x, preps[0], cfg), ref)
                    us = kc.time_graph([lambda p=p, cfg=cfg, x=x: run(x, p, cfg) for p in preps])
                except Exception as exc:  # noqa: BLE001 - reported, the sweep goes on
                    rows.append(dict(shape=label, kernel=kernel, error=str(exc)[:300]))
                    continue
                base = base or us
                row = dict(shape=label, kernel=kernel, config=cfg.to_dict(), us=us, rel_err=err,
                           x_gemm_kernel=base / us, x_bf16=bf16 / us, tb_s=nbytes / us / 1e6)
                if cfg.kind == "gemm16":
                    xh = x.half()
                    row["rel_err_fp16"] = kc.rel_err(run(xh, preps[0], cfg), kc.reference_out(xh, ck))
                rows.append(row)
                print(f"{label:34} {kernel:42} {us:7.1f} us  x{base / us:.2f} gemm_kernel  x{bf16 / us:.2f} bf16"
                      f"  err {err:.1e}" + (f" fp16 {row['rel_err_fp16']:.1e}" if "rel_err_fp16" in row else ""),
                      flush=True)
        del preps, dense
        torch.cuda.empty_cache()
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
