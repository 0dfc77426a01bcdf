"""ci/kernel_sass.py compiles the gemv kernel for sm_90 here (no GPU) and reads its main loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_main_loop_does_one_fma_and_one_decode_per_weight_value():
    # A process of its own: the kernel tests make Triton interpret, and an interpreted kernel does not compile.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(ROOT / "ci" / "kernel_sass.py"), "--bits", "4", "--block_n", "128",
                          "--json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    values = 16 * 128 * 8 / (32 * 4)  # one K block of W4 per thread
    ops = report["opcodes"]
    # Every weight value is decoded (LOP3 into a float's mantissa, FADD of the magic number) and multiplied
    # into the partial sum (FFMA); the group scale adds a few FFMAs more.
    assert ops["FFMA"] >= values and ops["LOP3"] >= values and ops["FADD"] >= values, ops
    assert 3.0 <= report["per_value"] < 8.0, report
    assert 0 < report["registers"] <= 255
