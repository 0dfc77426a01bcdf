"""Bad checkpoints: each one fails with one line that names the file, tensor or field."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import run_quantize
from vllm_autoround.format import FormatError
from vllm_autoround.format.validate import main as validate_main
from vllm_autoround.format.validate import validate_checkpoint

LAYER = "model.layers.0.mlp.down_proj"


@pytest.fixture(scope="module")
def good_ckpt(toy_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("validate") / "w4g32"
    run_quantize(toy_llama, out, "--bits", "4", "--group_size", "32", "--iters", "0")
    return out


@pytest.fixture
def ckpt(good_ckpt, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(good_ckpt, copy)
    return copy


def _shard(ckpt):
    return ckpt / "model-block-0000.safetensors"


def _rewrite(ckpt, edit):
    tensors = load_file(_shard(ckpt))
    edit(tensors)
    save_file(tensors, _shard(ckpt))


def _one_line_error(ckpt, *fragments):
    with pytest.raises(FormatError) as info:
        validate_checkpoint(ckpt)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_good_checkpoint_passes(good_ckpt, capsys):
    assert validate_main([str(good_ckpt)]) == 0
    assert "ok: 14 quantized layers" in capsys.readouterr().out


def test_truncated_safetensors(ckpt):
    data = _shard(ckpt).read_bytes()
    _shard(ckpt).write_bytes(data[: len(data) // 2])
    _one_line_error(ckpt, "model-block-0000.safetensors", "truncated")


def test_missing_qzeros(ckpt):
    _rewrite(ckpt, lambda t: t.pop(f"{LAYER}.qzeros"))
    _one_line_error(ckpt, "model-block-0000.safetensors", f"{LAYER}.qzeros is missing")


def test_wrong_scales_shape(ckpt):
    _rewrite(ckpt, lambda t: t.__setitem__(f"{LAYER}.scales", t[f"{LAYER}.scales"][:-1].clone()))
    _one_line_error(ckpt, f"{LAYER}.scales", "shape [15, 256]", "expected [16, 256]")


def test_wrong_qweight_dtype(ckpt):
    _rewrite(ckpt, lambda t: t.__setitem__(f"{LAYER}.qweight", t[f"{LAYER}.qweight"].to(torch.float32)))
    _one_line_error(ckpt, f"{LAYER}.qweight", "int32")


def test_wrong_qzeros_dtype(ckpt):
    _rewrite(ckpt, lambda t: t.__setitem__(f"{LAYER}.qzeros", t[f"{LAYER}.qzeros"].to(torch.int64)))
    _one_line_error(ckpt, f"{LAYER}.qzeros", "dtype I64")


def _edit_config(ckpt, **changes):
    path = ckpt / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"].update(changes)
    path.write_text(json.dumps(config))


def test_bits_5(ckpt):
    _edit_config(ckpt, bits=5)
    _one_line_error(ckpt, "config.json", "bits=5")


def test_group_size_not_dividing_in_features(ckpt):
    _edit_config(ckpt, group_size=96)  # in_features 256 and 512 are not multiples of 96
    _one_line_error(ckpt, "group_size 96 does not divide in_features")


def test_config_contradicting_tensors(ckpt):
    _edit_config(ckpt, bits=8)  # qweight rows now imply a different in_features and zeros layout
    _one_line_error(ckpt, "model-block-0000.safetensors", "expected")


def test_malformed_config_json(ckpt):
    (ckpt / "config.json").write_text('{"quantization_config": {"bits": 4,')
    _one_line_error(ckpt, "config.json", "malformed JSON")


def test_malformed_index_json(ckpt):
    (ckpt / "model.safetensors.index.json").write_text("{nope")
    _one_line_error(ckpt, "model.safetensors.index.json", "malformed")
