"""MoE models: transformers keeps their experts as fused 3-D tensors, which the quantizer cannot quantize.
RTN quantizes the Linear layers, copies the experts unchanged and says so; SignRound refuses before any work,
because the checkpoint stores the experts under other names than the model has in memory."""

from __future__ import annotations

import json

import torch

from tests.helpers import hf_reference_model, read_checkpoint, run_quantize


def test_rtn_quantizes_the_linear_layers_and_copies_the_experts(toy_mixtral, toy_mixtral_w4):
    ckpt, stderr = toy_mixtral_w4
    assert "of the decoder blocks' weights are not nn.Linear layers and stay in full precision" in stderr
    assert "mlp.experts.gate_up_proj [4, 512, 128]" in stderr
    report = json.loads((ckpt / "quantize_report.json").read_text())["not_linear_weights"]
    assert set(report["per_block"]) == {"mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight"}
    experts, router, attention = 4 * 3 * 128 * 256, 4 * 128, 2 * 128 * 128 + 2 * 64 * 128
    assert report["share"] == round((experts + router) / (experts + router + attention), 4)
    source, written = read_checkpoint(toy_mixtral), read_checkpoint(ckpt)
    assert "model.layers.1.self_attn.q_proj.qweight" in written
    experts = [name for name in source if ".block_sparse_moe." in name]
    assert len(experts) == 2 * (4 * 3 + 1)  # per layer: 4 experts x w1/w2/w3, and the router
    for name in experts:
        assert torch.equal(written[name], source[name]), name
    # transformers loads it back, converting the per-expert matrices to its fused experts
    model = hf_reference_model(ckpt)
    fused = model.model.layers[0].mlp.experts.gate_up_proj
    assert torch.equal(fused[1, :256], source["model.layers.0.block_sparse_moe.experts.1.w1.weight"].float())


def test_signround_refuses_moe_blocks_before_any_work(toy_mixtral, tmp_path):
    ckpt = tmp_path / "sr"
    proc = run_quantize(toy_mixtral, ckpt, "--iters", "1", "--nsamples", "2", "--seqlen", "32", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "not in the checkpoint under the names transformers gives them in memory" in proc.stderr
    assert "--iters 0 (RTN)" in proc.stderr
    assert not ckpt.exists() and not ckpt.with_name(ckpt.name + ".partial").exists()
