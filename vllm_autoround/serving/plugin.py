"""Entry point of group ``vllm.general_plugins``: vLLM calls :func:`register` in every process it starts."""

from __future__ import annotations

import logging

METHOD_NAME = "auto_round"


def register() -> None:
    """Register the ``auto_round`` quantization method with vLLM (idempotent)."""
    from vllm.model_executor.layers.quantization import register_quantization_config

    from vllm_autoround.serving.config import AutoRoundConfig

    register_quantization_config(METHOD_NAME)(AutoRoundConfig)
    share_handlers(logging.getLogger("vllm"), logging.getLogger("vllm_autoround"))


def share_handlers(source: logging.Logger, target: logging.Logger) -> None:
    """Give ``target`` (our package's logger) ``source``'s handlers and level (idempotent).

    Why: our modules log under ``vllm_autoround``, outside vLLM's logger tree, so in a server their INFO lines
    (the kernels' warm-up times) went nowhere and their warnings reached stderr unformatted. With vLLM's handlers
    they appear in its log, in its format, at its ``VLLM_LOGGING_LEVEL``.
    """
    for handler in source.handlers:
        if handler not in target.handlers:
            target.addHandler(handler)
    if source.handlers:
        target.setLevel(source.level)


ENTRY_POINT_GROUP = "vllm.general_plugins"


def entry_point_registered() -> bool:
    """Whether vLLM's plugin loader can see this package's entry point (installed package or
    ``ci/gpu/use_checkout.sh``).

    Why it matters: without the plugin, vLLM does not reject ``--quantization auto_round`` on an auto-round
    checkpoint. Its own INC method claims every ``quant_method: auto-round`` checkpoint before the requested
    name is checked, so the model is silently served by vLLM's kernels instead of ours.
    """
    from importlib.metadata import entry_points

    return any(ep.value.startswith("vllm_autoround.") for ep in entry_points(group=ENTRY_POINT_GROUP))


def require_plugin(engine=None) -> None:
    """Raise unless our plugin serves: its entry point is installed and, given an engine (``vllm.LLM`` or its
    ``llm_engine``), that engine resolved the quantization method to ours."""
    if not entry_point_registered():
        raise RuntimeError(f"vllm_autoround's {ENTRY_POINT_GROUP} entry point is not installed in this environment "
                           "(pip install the package, or on the GPU machine source ci/gpu/use_checkout.sh); vLLM "
                           "would serve auto-round checkpoints with its own INC loader instead of this plugin")
    model_config = getattr(getattr(engine, "llm_engine", engine), "model_config", None)
    resolved = getattr(model_config, "quantization", METHOD_NAME)
    if engine is not None and resolved != METHOD_NAME:
        raise RuntimeError(f"vLLM resolved the quantization method to {resolved!r}, not {METHOD_NAME!r}: "
                           "this engine does not run vllm_autoround's kernels")


def checked_llm(quantization: str | None = None, **kwargs):
    """``vllm.LLM(quantization=quantization, **kwargs)``; for this plugin's method, :func:`require_plugin` before
    it starts (no engine under a false name) and after (the method vLLM resolved)."""
    from vllm import LLM

    ours = quantization == METHOD_NAME
    if ours:
        require_plugin()
    llm = LLM(quantization=quantization, **kwargs)
    if ours:
        require_plugin(llm)
    return llm
