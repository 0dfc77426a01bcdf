"""One benchmark of one endpoint (load points and/or perplexity) into one result, saved after every
step so that a crash, a dead server or the deadline leaves the parts already measured on disk."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from vllm_autoround.format.files import write_bytes_atomic, write_text_atomic

from .client import Endpoint, RequestOptions, discover_model, new_session
from .lengths import LengthSpec
from .load import Budget, run_point, warm_up
from .perplexity import measure_perplexity
from .plots import plot_latency_cdf, plot_throughput
from .prompts import build_prompts
from .report import common_points, point_label, render_comparison, render_result
from .schema import BenchResult, LoadSettings, encode
from .tokenizing import resolve_tokenizer


@dataclass
class LoadConfig:
    input_len: LengthSpec = field(default_factory=lambda: LengthSpec.parse("256"))
    output_len: LengthSpec = field(default_factory=lambda: LengthSpec.parse("64"))
    num_prompts: int = 64
    points: list[tuple[int | None, float | None]] = field(default_factory=lambda: [(8, None)])
    prompts_file: str | None = None
    options: RequestOptions = field(default_factory=RequestOptions)
    seed: int = 0
    request_timeout: float = 120.0
    warmup: int = 1
    tokenizer: str = "auto"


@dataclass
class PerplexityConfig:
    text: str
    window: int | None = None  # default: min(512, max_model_len - 1)
    stride: int | None = None
    max_windows: int | None = 64
    api: str = "auto"
    concurrency: int = 4
    request_timeout: float = 120.0
    tokenizer: str = "auto"


def point_seed(seed: int, concurrency: int | None, rate: float | None) -> int:
    """Prompts depend on the run point, not on its position in a sweep, so two endpoints measured over
    different sweeps still get the same prompts at the same point (and a prefix cache does not see
    the previous point's prompts again)."""
    return seed * 1_000_003 + (concurrency or 0) * 1009 + round((rate or 0.0) * 1000)


def write_outputs(result: BenchResult, out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    written = [write_bytes_atomic(out / "result.json", encode(result)),
               write_text_atomic(out / "report.md", render_result(result))]
    if any(r.ok for p in result.load for r in p.records):
        written.append(plot_latency_cdf([(point_label(p), p) for p in result.load], out / "latency_cdf.png",
                                        title=f"{result.label}: latency CDF"))
        written.append(plot_throughput([(result.label, result.load)], out / "throughput.png",
                                       title=f"{result.label}: throughput and latency vs load"))
    return written


def write_comparison(a: BenchResult, b: BenchResult, out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    written = [write_text_atomic(out / "compare.md", render_comparison(a, b))]
    pairs = common_points(a, b)
    if pairs and any(r.ok for pa, pb in pairs for r in (*pa.records, *pb.records)):
        pa, pb = max(pairs, key=lambda pair: (pair[0].concurrency or 0, pair[0].request_rate or 0))
        written.append(plot_latency_cdf([(a.label, pa), (b.label, pb)], out / "compare_latency_cdf.png",
                                        title=f"latency CDF at {point_label(pa)}"))
        written.append(plot_throughput([(a.label, a.load), (b.label, b.load)], out / "compare_throughput.png",
                                       title="throughput and latency vs load"))
    return written


async def run_bench(
    endpoint: Endpoint,
    *,
    label: str | None = None,
    load: LoadConfig | None = None,
    perplexity: PerplexityConfig | None = None,
    budget: Budget | None = None,
    out_dir: str | os.PathLike | None = None,
    argv: list[str] | None = None,
    progress: bool = True,
) -> BenchResult:
    budget = budget or Budget()
    async with new_session() as session:
        info = await discover_model(session, endpoint)
        max_model_len = info.get("max_model_len") if isinstance(info.get("max_model_len"), int) else None
        if (perplexity is not None and perplexity.window and perplexity.tokenizer != "none" and max_model_len
                and perplexity.window >= max_model_len):  # before any load point is spent
            raise ValueError(f"--ppl-window {perplexity.window}: the server's max_model_len is {max_model_len} "
                             f"(a window plus one generated token must fit); use at most {max_model_len - 1}")
        result = BenchResult(label=label or endpoint.model, base_url=endpoint.base_url, model=endpoint.model,
                             created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             argv=list(argv or []))

        def save() -> None:
            if out_dir is not None:
                write_outputs(result, out_dir)

        if load is not None:
            await _run_load(session, endpoint, load, result, budget, max_model_len, save, progress)
        if perplexity is not None:
            if budget.exhausted():
                result.notes.append("perplexity not measured: the global deadline passed or a stop was requested")
            else:
                tokenizer = await resolve_tokenizer(perplexity.tokenizer, session, endpoint)
                window = perplexity.window or min(512, (max_model_len or 513) - 1)
                result.perplexity = await measure_perplexity(
                    session, endpoint, perplexity.text, tokenizer=tokenizer, window=window,
                    stride=perplexity.stride, max_windows=perplexity.max_windows, api=perplexity.api,
                    concurrency=perplexity.concurrency, request_timeout=perplexity.request_timeout,
                    budget=budget, progress=progress)
                if tokenizer is None:
                    result.notes.append("perplexity over text windows of about "
                                        f"{window} characters: no tokenizer, token counts are the server's")
        save()
    return result


async def _run_load(session, endpoint, cfg: LoadConfig, result: BenchResult, budget: Budget,
                    max_model_len: int | None, save, progress: bool) -> None:
    tokenizer = None
    if cfg.prompts_file is None or cfg.tokenizer not in ("auto", "none"):
        tokenizer = await resolve_tokenizer(cfg.tokenizer, session, endpoint)
    exact = tokenizer is not None and cfg.prompts_file is None and cfg.options.endpoint_kind == "completions"
    result.load_settings = LoadSettings(
        endpoint=cfg.options.endpoint_kind, input_len=str(cfg.input_len), output_len=str(cfg.output_len),
        prompt_source=cfg.prompts_file or "synthetic", prompt_tokens_exact=exact, num_prompts=cfg.num_prompts,
        seed=cfg.seed, request_timeout_s=cfg.request_timeout, ignore_eos=cfg.options.ignore_eos,
        warmup=cfg.warmup)
    if max_model_len and cfg.input_len.upper_bound + cfg.output_len.upper_bound > max_model_len:
        result.notes.append(f"lengths clipped so that input + output <= max_model_len {max_model_len}")

    async def prompts_for(n: int, seed: int):
        return await build_prompts(n, cfg.input_len, cfg.output_len, source=cfg.prompts_file, tokenizer=tokenizer,
                                   endpoint_kind=cfg.options.endpoint_kind, seed=seed, max_model_len=max_model_len)

    if cfg.warmup:
        errors = await warm_up(session, endpoint, await prompts_for(cfg.warmup, cfg.seed - 1), cfg.options,
                               cfg.request_timeout, budget)
        if errors:
            result.notes.append(f"warm-up requests failed: {', '.join(errors)}")
    for concurrency, rate in cfg.points:
        if budget.exhausted():
            result.notes.append(f"not run (deadline or stop): concurrency {concurrency}, rate {rate}")
            continue
        prompts = await prompts_for(cfg.num_prompts, point_seed(cfg.seed, concurrency, rate))
        point = await run_point(session, endpoint, prompts, cfg.options, concurrency=concurrency,
                                request_rate=rate, request_timeout=cfg.request_timeout, budget=budget,
                                seed=point_seed(cfg.seed, concurrency, rate), progress=progress)
        result.load.append(point)
        save()
