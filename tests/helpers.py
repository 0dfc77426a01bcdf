"""Independent references and small utilities shared by the tests.

``independent_dequantize`` reads the GPTQ layout through numpy's bit unpacking: a different algorithm
from the package's shift-and-mask code, so the two can check each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]


def bits_along_dim0(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Values packed along axis 0 of int32 ``words`` [W, C] as a little-endian bit stream → [count, C]."""
    as_bytes = words.astype("<i4").view(np.uint8).reshape(words.shape[0], words.shape[1], 4)
    stream = np.unpackbits(as_bytes.transpose(1, 0, 2).reshape(words.shape[1], -1), axis=1, bitorder="little")
    stream = stream[:, : count * bits].reshape(words.shape[1], count, bits).astype(np.int64)
    return (stream * (1 << np.arange(bits))).sum(-1).T  # [count, C]


def independent_dequantize(qweight, qzeros, scales, bits: int, group_size: int, zero_offset: int) -> torch.Tensor:
    """float64 ``[N, K]`` weight from checkpoint tensors."""
    qw = qweight.numpy()
    k = qw.shape[0] * 32 // bits
    n = qw.shape[1]
    codes = bits_along_dim0(qw, bits, k)  # [K, N]
    zeros = bits_along_dim0(np.ascontiguousarray(qzeros.numpy().T), bits, n).T + zero_offset  # [G, N]
    gs = k if group_size == -1 else group_size
    group_of_row = np.arange(k) // gs
    w = (codes - zeros[group_of_row]) * scales.to(torch.float64).numpy()[group_of_row]
    return torch.from_numpy(np.ascontiguousarray(w.T))


def read_checkpoint(ckpt: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted(Path(ckpt).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                out[name] = fh.get_tensor(name)
    return out


def dequantized_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's float state dict, each quantized layer replaced by its float64-dequantized weight."""
    config = json.loads((Path(ckpt) / "config.json").read_text())
    qcfg = config["quantization_config"]
    offset = 1 if qcfg["packing_format"] == "auto_round:auto_gptq" else 0
    tensors = read_checkpoint(ckpt)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith((".qzeros", ".scales", ".g_idx")):
            continue
        if not name.endswith(".qweight"):
            state[name] = tensor
            continue
        layer = name[: -len(".qweight")]
        override = qcfg.get("extra_config", {}).get(layer, {})
        bits = override.get("bits", qcfg["bits"])
        group_size = override.get("group_size", qcfg["group_size"])
        state[f"{layer}.weight"] = independent_dequantize(
            tensor, tensors[f"{layer}.qzeros"], tensors[f"{layer}.scales"], bits, group_size, offset)
    return state


def hf_reference_model(ckpt: Path, dtype: torch.dtype = torch.float32):
    """HF transformers model of the checkpoint's architecture carrying the dequantized weights.

    Loaded with ``from_pretrained`` from a float copy of the checkpoint, so that transformers applies its own
    on-load conversions (an MoE checkpoint's per-expert matrices become fused expert tensors)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ckpt)
    config.quantization_config = None
    del config.quantization_config
    state = {k: v.to(dtype).contiguous() for k, v in dequantized_state_dict(ckpt).items()}
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        save_file(state, str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
        model, info = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, output_loading_info=True)
    missing = [m for m in info["missing_keys"] if not (config.tie_word_embeddings and m == "lm_head.weight")]
    assert not missing and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def run_quantize(model: Path | str, output: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the quantize CLI in a subprocess, as a user would."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "vllm_autoround.quantize", "--model", str(model),
                           "--output", str(output), *args], capture_output=True, text=True, env=env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"quantize failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc
