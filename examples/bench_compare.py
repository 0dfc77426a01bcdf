"""Compare the original toy model with its W4 quantization, both served by vLLM, with the bench CLI.

Run with ``.venv/bin/python examples/bench_compare.py`` (about 5 minutes on a 2-core CPU). It builds
the toy model, quantizes it (RTN, W4 g128), starts two ``vllm serve`` processes on loopback and runs

    python -m vllm_autoround.bench compare --base-url URL_A --base-url URL_B --label fp32 --label w4g128 ...

which writes ``.cache/bench_compare/compare.md``, ``compare_latency_cdf.png``, ``compare_throughput.png``
and each side's own ``result.json`` / ``report.md`` / PNGs under ``a/`` and ``b/``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vllm_autoround.serving.launch import VLLMServer
from vllm_autoround.toy import build_toy_model

WORK = Path(__file__).resolve().parents[1] / ".cache" / "bench_compare"
BENCH_ARGS = ["--concurrency", "1,2,4,8", "--num-prompts", "32", "--input-len", "128", "--output-len", "64",
              "--ppl-text", "builtin", "--ppl-window", "256", "--ppl-max-windows", "32", "--max-duration", "1200"]


def quantized(model: Path) -> Path:
    ckpt = WORK / "toy-llama-w4g128"
    if not (ckpt / "config.json").exists():
        subprocess.run([sys.executable, "-m", "vllm_autoround.quantize", "--model", str(model), "--output",
                        str(ckpt), "--bits", "4", "--group_size", "128", "--iters", "0"], check=True)
    return ckpt


def main() -> int:
    model = build_toy_model(WORK / "toy-llama", "llama")
    ckpt = quantized(model)
    # --enforce-eager: no torch.compile warm-up (minutes on 2 cores, no gain for a model this small)
    with VLLMServer(model, extra_args=["--enforce-eager"]) as original, \
            VLLMServer(ckpt, quantization="auto_round", extra_args=["--enforce-eager"]) as w4:
        command = [sys.executable, "-m", "vllm_autoround.bench", "compare",
                   "--base-url", original.base_url, "--base-url", w4.base_url,
                   "--label", "fp32", "--label", "w4g128", *BENCH_ARGS, "--out", str(WORK)]
        print("$", " ".join(command), flush=True)
        return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
