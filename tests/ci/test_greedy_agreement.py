"""ci/gpu/greedy_agreement.py's float32 reference on the toy model (the vLLM runs need the GPU machine).

Its teacher-forced log-probabilities and its divergence gaps are checked against the reference's own greedy
choices: a shifted index would score the wrong position, and the argmax token would then not carry the
largest log-probability where the sequences part.
"""

from __future__ import annotations

import pytest
import torch

from ci.gpu.greedy_agreement import AGREE_PROMPTS, AGREE_TOKENS, error_summary, reference
from tests.quantize.signround_helpers import quantize_cli

PART_AT = 5


@pytest.fixture(scope="module")
def checkpoint(toy_llama, tmp_path_factory):
    return quantize_cli(toy_llama, tmp_path_factory.mktemp("agree") / "w4g32", "--iters", "0", "--bits", "4",
                        "--group_size", "32")


def test_reference_scores_each_loaders_tokens_where_they_were_chosen(toy_llama, checkpoint):
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(5, 900, (AGREE_PROMPTS, 12), generator=gen).tolist()
    first = reference(toy_llama, checkpoint, prompts, {})  # no loader runs: just its own greedy tokens
    greedy = first["greedy"]
    assert len(greedy) == AGREE_PROMPTS and all(len(g) == AGREE_TOKENS for g in greedy)
    # "ours" = the reference's own greedy tokens; "builtin" = the same but another token at PART_AT
    builtin = [g[:PART_AT] + [(g[PART_AT] + 1) % 1000] + g[PART_AT + 1:] for g in greedy]
    runs = {"ours": {"tokens": greedy}, "builtin": {"tokens": builtin}}
    ref = reference(toy_llama, checkpoint, prompts, runs)
    assert ref["greedy"] == greedy
    gaps = ref["divergence_gap"]
    assert [g["position"] for g in gaps] == [PART_AT] * AGREE_PROMPTS
    for gap in gaps:
        # the argmax token scores highest, so any other token trails it by at least the top-2 margin ...
        assert gap["top2_margin"] >= 0 and gap["ours"] - gap["builtin"] >= gap["top2_margin"] - 1e-9
    for seq in ref["logprobs"]["ours"]:
        assert len(seq) == AGREE_TOKENS and all(lp <= 0 for lp in seq)
    # ... and the other loader's token after the split point is scored on its own (different) prefix
    assert ref["logprobs"]["builtin"][0][:PART_AT] == pytest.approx(ref["logprobs"]["ours"][0][:PART_AT])
    # teacher-forced: float32 picks every one of its own greedy tokens, and not builtin's changed one
    assert ref["forced_matches"]["ours"] == AGREE_PROMPTS * AGREE_TOKENS
    assert ref["forced_matches"]["builtin"] <= AGREE_PROMPTS * (AGREE_TOKENS - 1)
    same = error_summary(ref["logprobs"]["ours"], ref["logprobs"]["ours"])
    assert same == "max 0.0000, mean 0.0000"
