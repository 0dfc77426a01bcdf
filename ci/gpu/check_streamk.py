"""The stream-K Gluon kernel's values on the GPU: tails, bias, repeated calls and CUDA-graph replays.

``kernels.wgmma_gemm.wgmma_streamk`` cannot run on the CPU (tests/kernels/test_streamk.py replays its schedule
in Python). Here each case runs through the launcher serving uses into a NaN-poisoned output and is compared
with a float32 reference: M, N and K tails, with and without bias, sym and asym, W4 and W2, three calls in a
row (the tile counters must come back zero) and three replays of a captured CUDA graph. Needs an sm_90 GPU::

    PYTHONPATH=. python3 ci/gpu/check_streamk.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from kernel_common import prepared, random_checkpoint, reference_out, rel_err  # noqa: E402

from vllm_autoround.kernels.launch import run  # noqa: E402
from vllm_autoround.kernels.tuning import wgmma_config  # noqa: E402

# (bits, group size, sym, K, N, M values)
CASES = ((4, 128, True, 4096, 14336, (256, 300)), (4, 128, True, 14336, 4096, (256,)),
         (4, 64, False, 4160, 4104, (77, 256, 513)), (2, 64, True, 4096, 6144, (129, 256)),
         (4, 32, True, 2048, 2056, (64, 200)))
CONFIGS = (wgmma_config(256, 128, 1, stream_k=True), wgmma_config(128, 128, 2, max_registers=128, stream_k=True),
           wgmma_config(128, 64, 2, warps=4, stages=3, stream_k=True))
TOLERANCE = 1e-2  # bf16 products of these sizes measure 2.3-2.4e-3 (docs/kernels.md)


def check(x: torch.Tensor, p, cfg, ref: torch.Tensor) -> list[float]:
    """Relative errors of three calls and three graph replays, each into a NaN-poisoned output."""
    errs = []
    out = torch.empty(x.shape[0], p.out_features, device=x.device, dtype=x.dtype)
    for _ in range(3):
        out.fill_(float("nan"))
        errs.append(rel_err(run(x, p, cfg, out), ref))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(x, p, cfg, out)
    for _ in range(3):
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        errs.append(rel_err(out, ref))
    return errs


def main() -> int:
    failures = 0
    for bits, gs, sym, k, n, ms in CASES:
        ck = random_checkpoint(bits, gs, sym, k, n)
        for with_bias in (False, True):
            bias = torch.randn(n, device="cuda", dtype=torch.bfloat16) if with_bias else None
            p = prepared(ck, bias=bias)
            for m in ms:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                ref = reference_out(x, ck, bias)
                for cfg in CONFIGS:
                    if bits == 2 and cfg.block_m == 256:
                        continue  # its x ring does not fit shared memory
                    errs = check(x, p, cfg, ref)
                    ok = max(errs) < TOLERANCE
                    failures += not ok
                    print(f"{'ok  ' if ok else 'FAIL'} W{bits} g{gs} {'sym' if sym else 'asym'} K={k} N={n} M={m} "
                          f"bias={with_bias} {cfg.block_m}x{cfg.block_n} w{cfg.num_warps} waves{cfg.waves:g}: "
                          f"max err {max(errs):.2e}", flush=True)
    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
