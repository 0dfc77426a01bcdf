"""Greedy agreement on a real model: our plugin vs vLLM's built-in loader on the same checkpoint (issue 5).

bench_serve.py measures agreement on a random-weight model, where bf16 rounding differences between two
correct kernels can flip a near-tied greedy choice early and the sequences then drift apart. This runs
the same measurement on real weights and real text: the model (e.g. SmolLM2 from ci/smollm2.py) is
quantized with our RTN, and both loaders greedily continue 8 held-out Brown windows of 128 tokens by 64
tokens. Each loader runs in its own process.

    python3 ci/gpu/greedy_agreement.py --model /tmp/acc/smollm2 --work /tmp/agree --bits 4 --group_size 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import AGREE_PROMPTS, AGREE_TOKENS, agreement, first_divergences  # noqa: E402

PROMPT_LEN = 128
LOADERS = {"ours": "auto_round", "builtin": None}


def prompt_ids(model: Path) -> list[list[int]]:
    from vllm_autoround.quantize.calibration import load_tokenizer
    from vllm_autoround.quantize.evaluate import heldout_windows

    return heldout_windows(load_tokenizer(model), PROMPT_LEN, AGREE_PROMPTS).tolist()


def generate(checkpoint: Path, quantization: str | None, prompts: list[list[int]]) -> list[list[int]]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(checkpoint), quantization=quantization, dtype="bfloat16", max_model_len=512,
              gpu_memory_utilization=0.5, seed=0)
    params = SamplingParams(max_tokens=AGREE_TOKENS, ignore_eos=True, temperature=0.0)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--bits", default="4")
    p.add_argument("--group_size", default="64")
    p.add_argument("--loader", choices=sorted(LOADERS), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    work = Path(a.work)
    checkpoint = work / f"w{a.bits}g{a.group_size}"
    if a.loader:
        tokens = generate(checkpoint, LOADERS[a.loader], json.loads((work / "prompts.json").read_text()))
        (work / f"{a.loader}.json").write_text(json.dumps(tokens))
        return 0
    work.mkdir(parents=True, exist_ok=True)
    (work / "prompts.json").write_text(json.dumps(prompt_ids(Path(a.model))))
    if not (checkpoint / "config.json").exists():
        subprocess.run([sys.executable, "-m", "vllm_autoround.quantize", "--model", a.model, "--output",
                        str(checkpoint), "--bits", a.bits, "--group_size", a.group_size, "--iters", "0",
                        "--device", "cuda"], check=True)
    for loader in LOADERS:
        subprocess.run([sys.executable, __file__, *(argv or sys.argv[1:]), "--loader", loader], check=True)
    ours, builtin = (json.loads((work / f"{name}.json").read_text()) for name in LOADERS)
    same = sum(x == y for o, b in zip(ours, builtin, strict=True) for x, y in zip(o, b, strict=True))
    firsts = first_divergences(ours, builtin)
    print(f"W{a.bits} g{a.group_size}, {AGREE_PROMPTS} held-out prompts x {AGREE_TOKENS} greedy tokens: "
          f"agreement before first divergence {agreement(ours, builtin):.1%}, same token at the same "
          f"position {same / (AGREE_PROMPTS * AGREE_TOKENS):.1%}; first divergence at {firsts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
