"""Run auto-round 0.16.1 itself (the peer we must match) on a local model, offline.

``amp=False``: on a CPU that reports bf16 support (cpuid avx512_bf16, as on the AMD EPYC CI machine of
2026-12-02) auto-round otherwise casts the model to bf16 before quantizing, so its RTN scales moved by up
to 0.4% against our float32 ones and the bit-for-bit comparison depended on the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r'''
import sys
from auto_round import AutoRound
from transformers import AutoModelForCausalLM, AutoTokenizer
from vllm_autoround.toy import builtin_text
src, out, bits, group_size, sym, iters, opt_rtn = sys.argv[1:8]
model = AutoModelForCausalLM.from_pretrained(src, dtype="float32")
tok = AutoTokenizer.from_pretrained(src)
texts = [t for t in builtin_text().split("\n\n") if len(t) > 400][:64]
ar = AutoRound(model, tok, bits=int(bits), group_size=int(group_size), sym=sym == "sym", iters=int(iters),
               dataset=texts, seqlen=64, nsamples=8, batch_size=4, device_map="cpu",
               disable_opt_rtn=opt_rtn != "opt_rtn", amp=False)
ar.quantize_and_save(out, format="auto_round")
'''


def autoround_quantize(model: Path, output: Path, bits: int, group_size: int, sym: bool, iters: int = 0,
                       opt_rtn: bool = False) -> Path:
    """Quantize with auto-round and return the checkpoint directory it wrote."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(model), str(output), str(bits), str(group_size),
                           "sym" if sym else "asym", str(iters), "opt_rtn" if opt_rtn else "plain"],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"auto-round failed:\n{proc.stderr[-3000:]}")
    written = [p.parent for p in Path(output).rglob("config.json")]
    assert len(written) == 1, written
    return written[0]
