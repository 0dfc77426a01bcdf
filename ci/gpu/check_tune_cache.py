"""Times the autotuner's first choice for a few M buckets of one layer, in a fresh process each call; run it
twice to see the second process read the choices from the persistent cache instead of timing again::

    PYTHONPATH=. python3 ci/gpu/check_tune_cache.py && PYTHONPATH=. python3 ci/gpu/check_tune_cache.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_common as kc  # noqa: E402

from vllm_autoround.kernels.tuning import TUNER  # noqa: E402


def main() -> None:
    ck = kc.random_checkpoint(3, 64, True, 4096, 14336)
    p = kc.prepared(ck)
    t0 = time.perf_counter()
    for m in (2, 4, 8, 16, 32, 64, 128):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        cfg = TUNER.choose(x, p)
        print(f"M={m:4} {cfg.kind} {cfg.block_m}x{cfg.block_n} w{cfg.waves:g} st{cfg.num_stages}", flush=True)
    torch.cuda.synchronize()
    print(f"choices for 7 M buckets in {time.perf_counter() - t0:.1f} s; cache {TUNER._path}", flush=True)


if __name__ == "__main__":
    main()
