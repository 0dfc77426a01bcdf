import json

import pytest

from vllm_autoround.format import FormatError, load_quant_config
from vllm_autoround.format.schema import LayerScheme, parse_quant_config

AUTO_ROUND_0161 = {  # what auto-round 0.16.1 wrote for a W4 g32 sym RTN run of a toy Llama
    "amp": False, "autoround_version": "0.16.1", "bits": 4, "block_name_to_quantize": "model.layers",
    "data_type": "int", "enable_quanted_input": False, "group_size": 32,
    "packing_format": "auto_round:auto_gptq", "quant_method": "auto-round", "sym": True,
}


def test_reads_what_auto_round_writes():
    cfg = parse_quant_config(AUTO_ROUND_0161)
    assert (cfg.bits, cfg.group_size, cfg.sym, cfg.zero_point_offset) == (4, 32, True, 1)
    assert cfg.quantized_scheme("model.layers.3.mlp.down_proj") == LayerScheme(4, 32, True)
    assert cfg.quantized_scheme("lm_head") is None


def test_extra_config_overrides_exact_then_regex():
    cfg = parse_quant_config(dict(AUTO_ROUND_0161, packing_format="auto_round", extra_config={
        "model.layers.0.mlp.down_proj": {"bits": 8, "group_size": -1},
        r".*self_attn.*": {"bits": 2, "sym": False},
        "model.layers.1.mlp.up_proj": {"bits": 16, "data_type": "float"},
        "lm_head": {"bits": 4},
    }))
    assert cfg.zero_point_offset == 0
    assert cfg.quantized_scheme("model.layers.0.mlp.down_proj") == LayerScheme(8, -1, True)
    assert cfg.quantized_scheme("model.layers.5.self_attn.q_proj") == LayerScheme(2, 32, False)
    assert cfg.quantized_scheme("model.layers.1.mlp.up_proj") is None
    assert cfg.quantized_scheme("lm_head") == LayerScheme(4, 32, True)


@pytest.mark.parametrize("change, message", [
    ({"bits": 5}, "bits=5"),
    ({"group_size": 48}, "group_size=48"),
    ({"quant_method": "gptq"}, "quant_method"),
    ({"packing_format": "auto_awq:gemm"}, "packing_format"),
    ({"data_type": "nv_fp"}, "data_type"),
    ({"bits": "four"}, "bits"),
    ({"extra_config": {"model.layers.0.mlp.up_proj": {"bits": 7}}}, "extra_config"),
])
def test_bad_fields_are_named(change, message):
    with pytest.raises(FormatError, match=message):
        parse_quant_config(dict(AUTO_ROUND_0161, **change))


def test_config_file_errors_name_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"quantization_config": {"bits": 4,,}}')
    with pytest.raises(FormatError, match=r"config.json: malformed JSON"):
        load_quant_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(FormatError, match="no quantization_config"):
        load_quant_config(tmp_path)
    with pytest.raises(FormatError, match="file not found"):
        load_quant_config(tmp_path / "missing")


def test_layer_scheme_shape_checks():
    with pytest.raises(FormatError, match="does not divide"):
        LayerScheme(4, 128, True).check_layer(in_features=96 * 2, out_features=64, where="x")
    with pytest.raises(FormatError, match="multiple of 32"):
        LayerScheme(4, -1, True).check_layer(in_features=48, out_features=64, where="x")
    LayerScheme(3, 32, False).check_layer(in_features=64, out_features=32, where="x")
