"""The whole job on the built-in toy model: build it, quantize it, serve it with vLLM, ask it something.

Run with ``make demo`` (or ``.venv/bin/python examples/demo.py``). Everything stays on this machine:
the model is trained here in about half a minute on text that ships with Python.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from vllm_autoround.serving.launch import VLLMServer
from vllm_autoround.toy import build_toy_model

WORK = Path(__file__).resolve().parents[1] / ".cache" / "demo"
PROMPT = "The assert statement"
QUANTIZE_ARGS = ["--bits", "4", "--group_size", "128", "--recipe", "light", "--nsamples", "16", "--seqlen", "128",
                 "--batch_size", "4"]


def timed(label: str, timings: dict, fn, *args, **kwargs):
    start = time.monotonic()
    result = fn(*args, **kwargs)
    timings[label] = time.monotonic() - start
    print(f"[demo] {label}: {timings[label]:.1f} s", flush=True)
    return result


def quantize(model: Path, output: Path) -> Path:
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(output.with_name(output.name + ".partial"), ignore_errors=True)
    subprocess.run([sys.executable, "-m", "vllm_autoround.quantize", "--model", str(model), "--output", str(output),
                    *QUANTIZE_ARGS], check=True)
    return output


def ask(base_url: str) -> dict:
    body = {"model": "model", "prompt": PROMPT, "max_tokens": 32, "temperature": 0.0}
    request = urllib.request.Request(f"{base_url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as resp:
        return json.load(resp)


def main() -> int:
    timings: dict[str, float] = {}
    model = timed("build toy model", timings, build_toy_model, WORK / "toy-llama", "llama")
    ckpt = timed("quantize (SignRound light, W4 g128)", timings, quantize, model, WORK / "toy-llama-w4g128")
    # --enforce-eager skips torch.compile, which takes ~1.5 min on a 2-core CPU for no gain at this size.
    server = VLLMServer(ckpt, quantization="auto_round", extra_args=["--enforce-eager"])
    timed("start vllm serve --quantization auto_round", timings, server.__enter__)
    try:
        reply = timed("request (32 tokens)", timings, ask, server.base_url)
    finally:
        server.stop()
    text = reply["choices"][0]["text"]
    tokens = reply["usage"]["completion_tokens"]
    print("\n=== completion from the quantized model served by vLLM ===")
    print(f"{PROMPT}{text}")
    print("\n=== timings ===")
    for label, seconds in timings.items():
        print(f"{label:<45} {seconds:8.1f} s")
    print(f"{'decode speed':<45} {tokens / timings['request (32 tokens)']:8.1f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
