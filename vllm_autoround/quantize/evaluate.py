"""Held-out perplexity of a model and of its quantized checkpoint (``--eval ppl``).

The quantized model is the original Hugging Face model with every quantized linear's weight replaced by
its dequantized value (what the serving kernels compute), so the two figures differ only by quantization.
The text is the held-out genre of the built-in Brown corpus, which default calibration never sees.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vllm_autoround.format.errors import FormatError
from vllm_autoround.format.schema import load_quant_config
from vllm_autoround.kernels.reference import dequantize
from vllm_autoround.quantize.calibration import load_tokenizer, prefix_tokens, token_stream
from vllm_autoround.quantize.corpus import brown_documents
from vllm_autoround.quantize.model_files import ModelFiles


def heldout_windows(tokenizer, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """``[n, seqlen]`` consecutive, non-overlapping windows of the held-out text, each led by the
    tokenizer's own prefix (e.g. BOS)."""
    if seqlen < 2:
        raise ValueError(f"--eval_seqlen ({seqlen}) must be >= 2")
    if tokenizer is None:
        raise FormatError("perplexity evaluation needs the model's tokenizer, and none was found")
    prefix = prefix_tokens(tokenizer)
    body = seqlen - len(prefix)
    stream = token_stream(tokenizer, brown_documents("heldout"))
    count = len(stream) // body if max_windows is None else min(len(stream) // body, max_windows)
    if count < 1:
        raise ValueError(f"--eval_seqlen {seqlen} is longer than the held-out text ({len(stream)} tokens)")
    return torch.tensor([prefix + stream[i * body : (i + 1) * body] for i in range(count)], dtype=torch.long)


@torch.no_grad()
def perplexity(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 1, desc: str = "perplexity") -> float:
    """exp(mean next-token NLL) over every predicted token of every window; logits scored in float32."""
    device = next(model.parameters()).device
    nll = torch.zeros((), dtype=torch.float64, device=device)
    for start in tqdm(range(0, windows.shape[0], batch_size), desc=desc, unit="batch", leave=False):
        ids = windows[start : start + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(),
                                                 reduction="sum").double()
    return math.exp(nll.item() / (windows.shape[0] * (windows.shape[1] - 1)))


def dequantized_weights(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """``layer.weight`` → float32 dequantized weight, for every packed linear in ``checkpoint``."""
    config = load_quant_config(checkpoint)
    files = ModelFiles(checkpoint)
    weights = {}
    for name in files.names():
        if name.endswith(".qweight"):
            layer = name.removesuffix(".qweight")
            scheme = config.scheme_for(layer)
            weights[f"{layer}.weight"] = dequantize(files.tensor(name), files.tensor(f"{layer}.qzeros"),
                                                    files.tensor(f"{layer}.scales"), scheme.bits,
                                                    scheme.group_size, config.zero_point_offset, torch.float32)
    return weights


def load_model(model_dir: str | Path, device: str | torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()


def apply_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Overwrite linear weights by name; a weight tied to the embeddings gets its own copy first."""
    embedding = model.get_input_embeddings().weight
    for name, value in weights.items():
        try:
            module = model.get_submodule(name.removesuffix(".weight"))
        except AttributeError:
            raise FormatError(f"{name}: the checkpoint has this layer but the model does not") from None
        if tuple(module.weight.shape) != tuple(value.shape):
            raise FormatError(f"{name}: shape {tuple(value.shape)} does not match the model's "
                              f"{tuple(module.weight.shape)}")
        if module.weight is embedding:
            module.weight = torch.nn.Parameter(torch.empty_like(embedding), requires_grad=False)
        module.weight.data.copy_(value)


def evaluate_ppl(model_dir: str | Path, checkpoint: str | Path, device: str, seqlen: int = 2048,
                 max_windows: int | None = None, batch_size: int = 1) -> dict[str, Any]:
    """Held-out perplexity of the original model and of ``checkpoint``, on the same windows."""
    started = time.monotonic()
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    windows = heldout_windows(load_tokenizer(model_dir), seqlen, max_windows)
    model = load_model(model_dir, device, dtype)
    original = perplexity(model, windows, batch_size, "perplexity (original)")
    apply_weights(model, dequantized_weights(checkpoint))
    quantized = perplexity(model, windows, batch_size, "perplexity (quantized)")
    return {"corpus": "brown-heldout", "seqlen": seqlen, "windows": int(windows.shape[0]), "dtype": str(dtype),
            "ppl_original": round(original, 4), "ppl_quantized": round(quantized, 4),
            "seconds": round(time.monotonic() - started, 3)}
