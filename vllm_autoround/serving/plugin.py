"""Entry point of group ``vllm.general_plugins``: vLLM calls :func:`register` in every process it starts."""

from __future__ import annotations

METHOD_NAME = "auto_round"


def register() -> None:
    """Register the ``auto_round`` quantization method with vLLM (idempotent)."""
    from vllm.model_executor.layers.quantization import register_quantization_config

    from vllm_autoround.serving.config import AutoRoundConfig

    register_quantization_config(METHOD_NAME)(AutoRoundConfig)
