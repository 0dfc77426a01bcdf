"""Post-training weight quantization: RTN and SignRound, writing the :mod:`vllm_autoround.format` layout."""
