"""vllm-autoround: SignRound weight quantization, dequant-GEMM kernels and a vLLM plugin."""

__version__ = "0.1.0"
