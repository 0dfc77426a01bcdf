"""RTN through the CLI: files, exact agreement with auto-round 0.16.1, atomic writes, clear errors."""

import json

import pytest
import torch

from tests.autoround_peer import autoround_quantize
from tests.helpers import read_checkpoint, run_quantize


@pytest.mark.parametrize("bits, group_size, sym", [(4, 32, True), (3, 32, False), (2, 64, True)])
def test_rtn_matches_auto_round_bit_for_bit(toy_llama, tmp_path, bits, group_size, sym):
    ours = tmp_path / "ours"
    run_quantize(toy_llama, ours, "--bits", str(bits), "--group_size", str(group_size), "--iters", "0",
                 *([] if sym else ["--asym"]))
    theirs = autoround_quantize(toy_llama, tmp_path / "theirs", bits, group_size, sym)
    ours_t, theirs_t = read_checkpoint(ours), read_checkpoint(theirs)
    assert set(ours_t) == set(theirs_t)
    for name, tensor in theirs_t.items():
        assert ours_t[name].dtype == tensor.dtype, name
        assert torch.equal(ours_t[name], tensor), name
    ours_q = json.loads((ours / "config.json").read_text())["quantization_config"]
    theirs_q = json.loads((theirs / "config.json").read_text())["quantization_config"]
    for key in ("bits", "group_size", "sym", "data_type", "quant_method", "packing_format", "block_name_to_quantize"):
        assert ours_q[key] == theirs_q[key], key


def test_checkpoint_layout(toy_llama, tmp_path):
    out = tmp_path / "out"
    run_quantize(toy_llama, out, "--bits", "4", "--group_size", "128", "--iters", "0")
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.safetensors.index.json", "quantize_report.json", "quantization_config.json"} <= files
    assert not (tmp_path / "out.partial").exists()
    tensors = read_checkpoint(out)
    assert tensors["lm_head.weight"].dtype == torch.float32  # left unquantized by default
    assert "lm_head.qweight" not in tensors
    assert tensors["model.layers.1.self_attn.q_proj.qweight"].shape == (256 * 4 // 32, 256)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)


def test_layer_config_and_lm_head(toy_llama, tmp_path):
    out = tmp_path / "mixed"
    layer_config = {"mlp.down_proj": {"bits": 8, "group_size": -1},
                    "model.layers.1.mlp.(gate|up)_proj": {"bits": 16}}
    run_quantize(toy_llama, out, "--bits", "4", "--group_size", "32", "--iters", "0",
                 "--layer_config", json.dumps(layer_config), "--quant_lm_head")
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    extra = qcfg["extra_config"]
    assert extra["model.layers.0.mlp.down_proj"] == {"bits": 8, "group_size": -1, "sym": True}
    assert extra["model.layers.1.mlp.up_proj"]["bits"] == 16
    assert extra["lm_head"] == {"bits": 4, "group_size": 32, "sym": True}
    tensors = read_checkpoint(out)
    assert tensors["model.layers.0.mlp.down_proj.scales"].shape == (1, 256)
    assert tensors["model.layers.1.mlp.up_proj.weight"].dtype == torch.float32
    assert "lm_head.qweight" in tensors


@pytest.mark.parametrize("args, message", [
    (["--bits", "5"], "bits=5"),
    (["--group_size", "48"], "group_size=48"),
    (["--layer_config", "{bad json"], "malformed JSON"),
    (["--layer_config", '{"no_such_layer": {"bits": 8}}'], "matches no linear layer"),
])
def test_bad_cli_input_fails_cleanly(toy_llama, tmp_path, args, message):
    proc = run_quantize(toy_llama, tmp_path / "x", "--iters", "0", *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_missing_model_dir_is_named(tmp_path):
    proc = run_quantize(tmp_path / "nope", tmp_path / "x", "--iters", "0", check=False)
    assert proc.returncode == 2 and "nope: model directory not found" in proc.stderr


def test_hub_ids_are_read_from_the_hub_cache(toy_llama, tmp_path, monkeypatch):
    """``--model org/name[@revision]`` that is not a local directory goes through huggingface_hub: here its cache,
    laid out as the Hub client writes it, read offline (the tests never reach the Hub)."""
    repo = tmp_path / "hub" / "models--acme--toy-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for item in toy_llama.iterdir():
        (snapshot / item.name).symlink_to(item)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_quantize("acme/toy-llama", tmp_path / "from_hub", "--iters", "0")
    run_quantize(toy_llama, tmp_path / "local", "--iters", "0")
    hub, local = read_checkpoint(tmp_path / "from_hub"), read_checkpoint(tmp_path / "local")
    assert hub.keys() == local.keys() and all(torch.equal(hub[k], local[k]) for k in hub)
    assert (tmp_path / "from_hub" / "tokenizer.json").exists()  # the snapshot's other files come along
    proc = run_quantize(f"acme/toy-llama@{commit}", tmp_path / "pinned", "--iters", "0", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_quantize("acme/not-cached", tmp_path / "x", "--iters", "0", check=False)
    assert proc.returncode == 2 and "acme/not-cached: not a local model directory" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()


def test_crash_leaves_no_complete_looking_checkpoint(toy_llama, tmp_path):
    """A run that dies while writing a shard leaves only OUTPUT.partial (with the shard's half-written
    temporary file); --resume then finishes it, and the temporary file is not published."""
    import subprocess
    import sys

    out = tmp_path / "out"
    code = ("import sys; import vllm_autoround.quantize.writer as w; orig = w.save_file\n"
            "def boom(tensors, path, **k):\n"
            "    if 'block-0001' in path:\n"
            "        open(path, 'wb').write(b'half'); import os; os._exit(9)\n"
            "    return orig(tensors, path, **k)\n"
            "w.save_file = boom\n"
            "from vllm_autoround.quantize.__main__ import main\n"
            f"sys.exit(main(['--model', {str(toy_llama)!r}, '--output', {str(out)!r}, '--iters', '0']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 9
    assert not out.exists()
    partial = tmp_path / "out.partial"
    assert (partial / "model-block-0000.safetensors").exists()
    assert not (partial / "model-block-0001.safetensors").exists()
    assert [p.name for p in partial.glob(".model-block-0001.safetensors.*")]  # the killed write's temporary
    proc = run_quantize(toy_llama, out, "--iters", "0", check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr
    run_quantize(toy_llama, out, "--iters", "0", "--resume")
    reference = tmp_path / "reference"
    run_quantize(toy_llama, reference, "--iters", "0")
    a, b = read_checkpoint(out), read_checkpoint(reference)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
