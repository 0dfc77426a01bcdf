"""The result file: one msgspec schema for load tests, sweeps and perplexity, so that reports and
``compare`` read exactly what the runs wrote. Times are seconds; reports convert to ms."""

from __future__ import annotations

import msgspec

SCHEMA_VERSION = 1


class RequestRecord(msgspec.Struct, kw_only=True):
    """One request as the client saw it; mutated while the request runs so that a timeout or the
    global deadline still leaves the partial timings."""

    index: int
    start: float = 0.0  # seconds since the start of the run point
    prompt_tokens: int | None = None  # as reported by the server (usage), else None
    output_tokens: int = 0
    output_tokens_source: str = "chunks"  # "usage" when the server reported it
    ok: bool = False
    error: str | None = None  # error kind, e.g. "timeout", "http_500", "disconnected"
    error_detail: str | None = None
    ttft: float | None = None
    e2e: float | None = None
    itl: list[float] = msgspec.field(default_factory=list)
    malformed_lines: int = 0


class Distribution(msgspec.Struct, kw_only=True):
    count: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float


class RunSummary(msgspec.Struct, kw_only=True):
    completed: int
    failed: int
    not_sent: int
    errors: dict[str, int]
    malformed_sse_lines: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    total_prompt_tokens: int
    total_output_tokens: int
    ttft: Distribution | None = None
    tpot: Distribution | None = None
    itl: Distribution | None = None
    e2e: Distribution | None = None


class LoadPoint(msgspec.Struct, kw_only=True):
    """One point of a run: a fixed concurrency, or a Poisson rate (with an optional concurrency cap)."""

    concurrency: int | None
    request_rate: float | None  # requests/s; None = send as fast as the concurrency allows
    num_prompts: int
    summary: RunSummary
    records: list[RequestRecord]
    stopped_by_deadline: bool = False


class LoadSettings(msgspec.Struct, kw_only=True):
    endpoint: str  # "completions" or "chat"
    input_len: str  # length spec, e.g. "128", "uniform:64,256"
    output_len: str
    prompt_source: str  # "synthetic" or a file path
    prompt_tokens_exact: bool  # prompts sent as token ids of exactly the drawn length
    num_prompts: int
    seed: int
    request_timeout_s: float
    ignore_eos: bool
    warmup: int


class PerplexityWindow(msgspec.Struct, kw_only=True):
    index: int
    first_token: int | None  # offset of the window in the token stream; None for text windows
    tokens_sent: int | None  # None for text windows (the server tokenizes)
    prompt_tokens_reported: int | None
    scored_tokens: int = 0
    nll: float = 0.0  # sum of -logprob over the scored tokens
    error: str | None = None
    error_detail: str | None = None


class PerplexityResult(msgspec.Struct, kw_only=True):
    text_path: str
    text_sha256: str
    tokenizer: str  # "server", a local tokenizer path, or "none" (text windows, server counts)
    api: str  # "prompt_logprobs" or "echo"
    window: int  # tokens per window (or characters for text windows)
    stride: int
    windows: list[PerplexityWindow]
    total_tokens: int  # tokens of the text (or of the prefix tokenized); 0 for text windows
    scored_tokens: int
    nll: float
    perplexity: float | None
    errors: dict[str, int]
    complete: bool


class BenchResult(msgspec.Struct, kw_only=True):
    schema_version: int = SCHEMA_VERSION
    tool: str = "vllm-autoround-bench"
    label: str
    base_url: str
    model: str
    created: str  # ISO 8601, UTC
    argv: list[str] = msgspec.field(default_factory=list)
    load_settings: LoadSettings | None = None
    load: list[LoadPoint] = msgspec.field(default_factory=list)
    perplexity: PerplexityResult | None = None
    notes: list[str] = msgspec.field(default_factory=list)


def encode(result: BenchResult) -> bytes:
    return msgspec.json.format(msgspec.json.encode(result), indent=1)


def decode(data: bytes, source: str = "<bytes>") -> BenchResult:
    """Decode a result file; a file of another schema or version fails with a one-line error."""
    try:
        result = msgspec.json.decode(data, type=BenchResult)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{source}: not a vllm-autoround-bench result file: {exc}") from None
    if result.schema_version != SCHEMA_VERSION:
        raise ValueError(f"{source}: schema_version {result.schema_version}, this tool reads {SCHEMA_VERSION}")
    return result
