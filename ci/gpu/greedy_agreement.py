"""Greedy agreement on a real model: our plugin vs vLLM's built-in loader on the same checkpoint (issue 5).

bench_serve.py measures agreement on a random-weight model, where bf16 rounding differences between two
correct kernels can flip a near-tied greedy choice early and the sequences then drift apart. This runs
the same measurement on real weights and real text: the model (e.g. SmolLM2 from ci/smollm2.py) is
quantized with our RTN, and both loaders greedily continue 8 held-out Brown windows of 128 tokens by 64
tokens. Each loader runs in its own process.

A third reader settles whether a divergence is a near-tie or an error: Hugging Face transformers in
float32 on the checkpoint's dequantized weights (the value both loaders approximate in bf16). It gives
its own greedy continuation, and, teacher-forced on each loader's sequence, the float32 log-probability
of every token the loader chose; at each first divergence it gives the float32 log-probability gap
between the two loaders' choices (a gap near 0 is a near-tie that bf16 rounding may flip).

Teacher-forced agreement, where one early near-tie cannot decide a whole sequence: the built-in loader
(which runs second) scores our greedy tokens with its own top choice on the same context, and float32 does
the same on each loader's sequence.

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

from bench_serve import (  # noqa: E402
    AGREE_PROMPTS,
    AGREE_TOKENS,
    agreement,
    describe_forced,
    first_divergences,
    score_partner,
)

PROMPT_LEN = 128
LOADERS = {"ours": "auto_round", "builtin": None}


def prompt_ids(model: Path) -> list[list[int]]:
    from vllm_autoround.quantize.calibration import load_tokenizer
    from vllm_autoround.quantize.evaluate import heldout_windows

    return heldout_windows(load_tokenizer(model), PROMPT_LEN, AGREE_PROMPTS).tolist()


def generate(checkpoint: Path, quantization: str | None, prompts: list[list[int]],
             partner: list[list[int]] | None = None) -> dict:
    """Greedy tokens and, per token, the engine's own log-probability of it; given the other loader's greedy
    tokens, also how often this engine's top choice is that token on the same context (teacher-forced)."""
    from vllm import SamplingParams

    from vllm_autoround.serving.plugin import checked_llm

    llm = checked_llm(model=str(checkpoint), quantization=quantization, dtype="bfloat16", max_model_len=512,
                      gpu_memory_utilization=0.5, seed=0)
    params = SamplingParams(max_tokens=AGREE_TOKENS, ignore_eos=True, temperature=0.0, logprobs=1)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    logprobs = [[step[t].logprob for t, step in zip(toks, o.outputs[0].logprobs, strict=True)]
                for toks, o in zip(tokens, outs, strict=True)]
    run = {"tokens": tokens, "logprobs": logprobs}
    if partner is not None:
        run["forced"] = score_partner(llm, prompts, partner)
    return run


def reference(model: Path, checkpoint: Path, prompts: list[list[int]], runs: dict[str, dict]) -> dict:
    """float32 transformers on the dequantized weights: its greedy tokens, its log-probability of every
    token each loader chose (teacher-forced), and its gap between the loaders' choices where they part."""
    import torch

    from vllm_autoround.quantize.evaluate import apply_weights, dequantized_weights, load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = load_model(model, device, torch.float32)
    apply_weights(hf, dequantized_weights(checkpoint))
    out: dict = {"greedy": [], "logprobs": {name: [] for name in runs}, "divergence_gap": [],
                 "forced_matches": dict.fromkeys(runs, 0)}
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            ids = list(prompt)
            for _ in range(AGREE_TOKENS):  # plain argmax, no end-of-text handling (the loaders ignore EOS)
                ids.append(int(hf(torch.tensor([ids], device=device)).logits[0, -1].argmax()))
            out["greedy"].append(ids[len(prompt):])
            seqs = {name: run["tokens"][i] for name, run in runs.items()}
            rows = {}  # per loader: float32 log-probs of every vocabulary token at each generated position
            for name, seq in seqs.items():
                full = torch.tensor([prompt + seq], device=device)
                rows[name] = torch.log_softmax(hf(full).logits[0, len(prompt) - 1 : -1].double(), -1)
                out["logprobs"][name].append(rows[name].gather(-1, full[0, len(prompt):, None])[:, 0].tolist())
                # float32's own choice on the loader's context: does it pick the loader's token?
                out["forced_matches"][name] += int((rows[name].argmax(-1) == full[0, len(prompt):]).sum())
            if set(seqs) != set(LOADERS):
                continue
            a, b = seqs["ours"], seqs["builtin"]
            at = first_divergences([a], [b])[0]
            if at < len(a):  # the prefixes are equal up to here, so ours' teacher-forced row is the one
                logp = rows["ours"][at]
                top2 = logp.topk(2).values.tolist()
                out["divergence_gap"].append({"prompt": i, "position": at, "ours": logp[a[at]].item(),
                                              "builtin": logp[b[at]].item(), "top2_margin": top2[0] - top2[1]})
    return out


def error_summary(engine: list[list[float]], ref: list[list[float]]) -> str:
    """max and mean |engine - float32 reference| log-probability over every generated token."""
    diffs = [abs(e - r) for es, rs in zip(engine, ref, strict=True) for e, r in zip(es, rs, strict=True)]
    return f"max {max(diffs):.4f}, mean {sum(diffs) / len(diffs):.4f}"


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
        first = next(iter(LOADERS))  # it runs first; the second loader scores its tokens
        partner = None if a.loader == first else json.loads((work / f"{first}.json").read_text())["tokens"]
        run = generate(checkpoint, LOADERS[a.loader], json.loads((work / "prompts.json").read_text()), partner)
        (work / f"{a.loader}.json").write_text(json.dumps(run))
        return 0
    work.mkdir(parents=True, exist_ok=True)
    (work / "prompts.json").write_text(json.dumps(prompt_ids(Path(a.model))))
    if not (checkpoint / "config.json").exists():
        subprocess.run([sys.executable, "-m", "vllm_autoround.quantize", "--model", a.model, "--output",
                        str(checkpoint), "--bits", a.bits, "--group_size", a.group_size, "--iters", "0",
                        "--device", "cuda"], check=True)
    for loader in LOADERS:
        subprocess.run([sys.executable, __file__, *(argv or sys.argv[1:]), "--loader", loader], check=True)
    runs = {name: json.loads((work / f"{name}.json").read_text()) for name in LOADERS}
    ours, builtin = runs["ours"]["tokens"], runs["builtin"]["tokens"]
    total = AGREE_PROMPTS * AGREE_TOKENS
    same = sum(x == y for o, b in zip(ours, builtin, strict=True) for x, y in zip(o, b, strict=True))
    print(f"W{a.bits} g{a.group_size}, {AGREE_PROMPTS} held-out prompts x {AGREE_TOKENS} greedy tokens: "
          f"agreement before first divergence {agreement(ours, builtin):.1%}, same token at the same "
          f"position {same / total:.1%}; first divergence at "
          f"{first_divergences(ours, builtin)}")
    for name, run in runs.items():
        if "forced" in run:
            print(describe_forced(name, "the other loader", run["forced"]))
    ref = reference(Path(a.model), checkpoint, json.loads((work / "prompts.json").read_text()), runs)
    (work / "reference.json").write_text(json.dumps(ref))
    for name, run in runs.items():
        print(f"{name} vs float32 reference: greedy agreement {agreement(run['tokens'], ref['greedy']):.1%} "
              f"(first divergence at {first_divergences(run['tokens'], ref['greedy'])}); |log-prob error| "
              f"of its chosen tokens {error_summary(run['logprobs'], ref['logprobs'][name])}; float32's top "
              f"choice on its context is its token at {ref['forced_matches'][name] / total:.1%}")
    for gap in ref["divergence_gap"]:
        print(f"prompt {gap['prompt']} parts at token {gap['position']}: float32 log-prob of ours' token "
              f"{gap['ours']:.4f}, of built-in's {gap['builtin']:.4f} (top-2 margin there "
              f"{gap['top2_margin']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
