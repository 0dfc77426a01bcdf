"""vLLM plugin: the ``auto_round`` quantization method, adapting :mod:`vllm_autoround.kernels` to vLLM layers.

Importing this package does not import vLLM; :func:`vllm_autoround.serving.plugin.register` does.
"""
