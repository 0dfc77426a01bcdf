"""Compare a model served by vLLM with HF transformers on the same dequantized weights."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import torch

from tests.helpers import hf_reference_model

MAX_TOKENS = 12
LOGPROB_ATOL = 0.02  # bf16-level agreement; float32 on both sides lands near 1e-4
TIE_MARGIN = 1e-3


def eval_prompts(model_dir: Path, count: int = 4) -> list[list[int]]:
    """Token-id prompts of different lengths cut from the built-in text."""
    from transformers import AutoTokenizer

    from vllm_autoround.toy import builtin_text

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    paragraphs = [p for p in builtin_text().split("\n\n") if len(p) > 300]
    lengths = [6, 17, 33, 48]
    return [tokenizer(paragraphs[7 * i + 3])["input_ids"][: lengths[i % 4]] for i in range(count)]


def complete(base_url: str, prompt: list[int], max_tokens: int = MAX_TOKENS) -> dict:
    body = {"model": "model", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
            "prompt_logprobs": 1, "return_token_ids": True}
    request = urllib.request.Request(f"{base_url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.load(resp)["choices"][0]


@torch.no_grad()
def hf_greedy(model, prompt: list[int], steps: int) -> tuple[list[int], list[float], torch.Tensor]:
    """Greedy tokens, the top-1/top-2 margin at each step, and the prompt's next-token log-probs."""
    ids = torch.tensor([prompt])
    prompt_logprobs = torch.log_softmax(model(ids).logits[0].double(), -1)
    tokens, margins = [], []
    for _ in range(steps):
        logprobs = torch.log_softmax(model(ids).logits[0, -1].double(), -1)
        top2 = logprobs.topk(2)
        tokens.append(int(top2.indices[0]))
        margins.append(float(top2.values[0] - top2.values[1]))
        ids = torch.cat([ids, top2.indices[:1].view(1, 1)], dim=1)
    return tokens, margins, prompt_logprobs


def assert_served_matches_hf(base_url: str, ckpt: Path, prompts: list[list[int]]) -> dict:
    """(a) greedy tokens equal HF's (up to a genuine near-tie), (b) prompt log-probs agree."""
    model = hf_reference_model(ckpt)
    worst = 0.0
    compared = 0
    for prompt in prompts:
        served = complete(base_url, prompt)
        ours = served["token_ids"]
        expected, margins, hf_prompt_lp = hf_greedy(model, prompt, len(ours))
        for step, (got, want) in enumerate(zip(ours, expected, strict=True)):
            if got != want:
                assert margins[step] < TIE_MARGIN, (
                    f"prompt {prompt[:6]}...: step {step} served {got}, HF {want} (margin {margins[step]:.4f}); "
                    f"served {ours} vs HF {expected}")
                break
            compared += 1
        served_lp = served["prompt_logprobs"]
        assert served_lp[0] is None and len(served_lp) == len(prompt)
        for pos in range(1, len(prompt)):
            got = served_lp[pos][str(prompt[pos])]["logprob"]
            want = float(hf_prompt_lp[pos - 1, prompt[pos]])
            worst = max(worst, abs(got - want))
        assert worst < LOGPROB_ATOL, f"prompt log-prob differs by {worst:.4f}"
    assert compared >= len(prompts) * MAX_TOKENS // 2, "too few greedy tokens compared"
    return {"max_logprob_diff": worst, "tokens_compared": compared}
