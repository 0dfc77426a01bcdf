"""The quantization plan: group sizes that do not divide a layer's in_features fall back, loudly."""

from __future__ import annotations

from vllm_autoround.format.schema import LayerScheme
from vllm_autoround.quantize.plan import build_plan, meta_model, plan_warnings


def _llama(hidden: int, intermediate: int) -> dict:
    return dict(model_type="llama", hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=1,
                num_attention_heads=hidden // 32, num_key_value_heads=hidden // 32, vocab_size=128)


def test_group_size_falls_back_to_the_largest_that_divides():
    # hidden 192 = 1.5 x 128 = 3 x 64; intermediate 224 = 7 x 32 (64 does not divide it either).
    plan = build_plan(meta_model(_llama(192, 224)), LayerScheme(4, 128, True))
    groups = {layer.name.split(".")[-1]: layer.scheme.group_size for layer in plan.layers()}
    assert groups == {"q_proj": 64, "k_proj": 64, "v_proj": 64, "o_proj": 64, "gate_proj": 64, "up_proj": 64,
                      "down_proj": 32}
    assert plan.regrouped["model.layers.0.mlp.down_proj"] == 32 and len(plan.regrouped) == 7
    extra = plan.quant_config().extra_config
    assert extra["model.layers.0.self_attn.q_proj"].group_size == 64  # written where readers look
    assert extra["model.layers.0.mlp.down_proj"].group_size == 32
    assert "7 layers get group_size 64/32 instead of 128" in plan_warnings(plan)[0]


def test_dividing_group_sizes_and_per_channel_are_kept():
    plan = build_plan(meta_model(_llama(256, 512)), LayerScheme(4, 128, True))
    assert not plan.regrouped and not plan.skipped and not plan_warnings(plan)
    plan = build_plan(meta_model(_llama(192, 224)), LayerScheme(4, -1, False))
    assert not plan.regrouped and {layer.scheme.group_size for layer in plan.layers()} == {-1}


def test_layers_no_group_can_describe_stay_unquantized_with_a_warning():
    # in_features 48 is not a multiple of 32 (int32 packing), so no group size can help.
    plan = build_plan(meta_model(_llama(96, 48)), LayerScheme(4, 32, True))
    assert list(plan.skipped) == ["model.layers.0.mlp.down_proj"]
    assert plan.quant_config().extra_config["model.layers.0.mlp.down_proj"].bits == 16
    assert plan_warnings(plan) == ["1 layers stay unquantized: model.layers.0.mlp.down_proj: group_size 32 does "
                                   "not divide in_features 48"]


def test_weights_that_are_not_linear_layers_are_named_with_their_share():
    """transformers keeps an MoE block's experts as fused 3-D tensors, not nn.Linear: the plan cannot quantize
    them, so it says which tensors stay in full precision and how much of the blocks' weights they hold."""
    config = dict(model_type="mixtral", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_local_experts=4,
                  num_experts_per_tok=2, vocab_size=128)
    plan = build_plan(meta_model(config), LayerScheme(4, 32, True))
    assert {layer.name.split(".", 3)[-1] for layer in plan.blocks[0]} == {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
    assert plan.not_linear == {"mlp.experts.gate_up_proj": [4, 192, 64], "mlp.experts.down_proj": [4, 64, 96],
                               "mlp.gate.weight": [4, 64]}
    attention = 64 * 64 + 32 * 64 + 32 * 64 + 64 * 64
    experts = 4 * 192 * 64 + 4 * 64 * 96 + 4 * 64
    assert abs(plan.not_linear_share - experts / (experts + attention)) < 1e-9
    (line,) = plan_warnings(plan)
    assert line.startswith(f"{experts / (experts + attention):.0%} of the decoder blocks' weights are not nn.Linear")
    assert "mlp.experts.gate_up_proj [4, 192, 64], mlp.experts.down_proj [4, 64, 96], mlp.gate.weight" in line
