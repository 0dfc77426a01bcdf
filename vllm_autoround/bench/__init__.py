"""Benchmark OpenAI-compatible endpoints: load (throughput, TTFT, TPOT, ITL, latency), concurrency
sweeps, perplexity from prompt logprobs, and side-by-side comparison reports.

CLI: ``python -m vllm_autoround.bench {load,sweep,ppl,compare} --help``.
"""

from .client import Endpoint, Prompt, RequestOptions
from .lengths import LengthSpec
from .load import Budget, run_point
from .perplexity import measure_perplexity
from .runner import LoadConfig, PerplexityConfig, run_bench, write_comparison, write_outputs
from .schema import BenchResult, decode, encode

__all__ = [
    "BenchResult", "Budget", "Endpoint", "LengthSpec", "LoadConfig", "PerplexityConfig", "Prompt",
    "RequestOptions", "decode", "encode", "measure_perplexity", "run_bench", "run_point", "write_comparison",
    "write_outputs",
]
