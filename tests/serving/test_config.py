"""The plugin's per-layer decisions, without starting a server."""

import pytest

from vllm_autoround.format import FormatError
from vllm_autoround.format.schema import LayerScheme

vllm = pytest.importorskip("vllm")

from vllm_autoround.serving import backend  # noqa: E402
from vllm_autoround.serving.config import AutoRoundConfig  # noqa: E402

BASE = {"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True, "data_type": "int",
        "packing_format": "auto_round:auto_gptq", "block_name_to_quantize": "model.layers"}


def test_claims_auto_round_checkpoints_only_when_asked():
    assert AutoRoundConfig.override_quantization_method(BASE, "auto_round") == "auto_round"
    assert AutoRoundConfig.override_quantization_method(BASE, None) is None
    assert AutoRoundConfig.override_quantization_method({"quant_method": "gptq"}, "auto_round") is None


def test_fused_layers_take_their_parts_scheme():
    cfg = AutoRoundConfig.from_config(dict(BASE, extra_config={
        "model.layers.0.mlp.gate_proj": {"bits": 16}, "model.layers.0.mlp.up_proj": {"bits": 16},
        "model.layers.1.self_attn.k_proj": {"bits": 8}}))
    assert cfg.scheme_for_prefix("model.layers.2.self_attn.qkv_proj") == LayerScheme(4, 128, True)
    assert cfg.scheme_for_prefix("model.layers.0.mlp.gate_up_proj") is None
    assert cfg.scheme_for_prefix("lm_head") is None
    with pytest.raises(FormatError, match="must share one scheme"):
        cfg.scheme_for_prefix("model.layers.1.self_attn.qkv_proj")


def test_models_packed_modules_mapping_is_used():
    cfg = AutoRoundConfig.from_config(dict(BASE, extra_config={"model.layers.0.attn.c_attn": {"bits": 8}}))
    cfg.packed_modules_mapping = {"c_attn_fused": ["c_attn"]}
    assert cfg.scheme_for_prefix("model.layers.0.attn.c_attn_fused") == LayerScheme(8, 128, True)


@pytest.mark.parametrize("device, expected", [("cuda", "triton"), ("cpu", "torch"), ("xpu", "torch"),
                                              ("hpu", "torch")])
def test_backend_follows_the_platform(monkeypatch, device, expected):
    monkeypatch.delenv("VLLM_AUTOROUND_BACKEND", raising=False)
    monkeypatch.setattr(backend, "device_type", lambda: device)
    assert backend.choose_backend() == expected


def test_backend_can_be_forced(monkeypatch):
    monkeypatch.setattr(backend, "device_type", lambda: "cuda")
    monkeypatch.setenv("VLLM_AUTOROUND_BACKEND", "torch")
    assert backend.choose_backend() == "torch"
    monkeypatch.setenv("VLLM_AUTOROUND_BACKEND", "cuda-graphs")
    with pytest.raises(ValueError, match="VLLM_AUTOROUND_BACKEND"):
        backend.choose_backend()
