"""Markdown reports: one result, or two results side by side (matched run point by run point)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from .schema import BenchResult, Distribution, LoadPoint, PerplexityResult, RunSummary


def point_key(point: LoadPoint) -> tuple[int | None, float | None]:
    return point.concurrency, point.request_rate


def point_label(point: LoadPoint) -> str:
    parts = []
    if point.concurrency is not None:
        parts.append(f"concurrency {point.concurrency}")
    if point.request_rate is not None:
        parts.append(f"rate {point.request_rate:g}/s")
    return ", ".join(parts) or "unbounded"


def _ms(d: Distribution | None, q: str) -> str:
    return "-" if d is None else f"{getattr(d, q) * 1e3:.1f}"


def _s(d: Distribution | None, q: str) -> str:
    return "-" if d is None else f"{getattr(d, q):.3f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _ppl_cells(p: PerplexityResult) -> list[str]:
    ok = sum(1 for w in p.windows if w.error is None)
    return [p.text_path, p.tokenizer, p.api, f"{p.window}/{p.stride}", f"{ok}/{len(p.windows)}",
            str(p.scored_tokens), "-" if p.perplexity is None else f"{p.perplexity:.4f}"]


def render_result(result: BenchResult) -> str:
    lines = [f"# Benchmark: {result.label}", "",
             f"- endpoint: `{result.base_url}`, model `{result.model}`", f"- created: {result.created} (UTC)"]
    s = result.load_settings
    if s is not None:
        lines += [f"- requests: `/v1/{'chat/' if s.endpoint == 'chat' else ''}completions`, streamed; "
                  f"input length {s.input_len} {'tokens' if s.prompt_tokens_exact else '(words or file prompts)'}, "
                  f"output length {s.output_len} tokens{' (ignore_eos)' if s.ignore_eos else ''}",
                  f"- prompts: {s.prompt_source}, {s.num_prompts} per point, seed {s.seed}, "
                  f"request timeout {s.request_timeout_s:g} s, warm-up {s.warmup}"]
    if result.load:
        lines += ["", "## Load", ""]
        header = ["point", "ok", "failed", "not sent", "req/s", "out tok/s", "total tok/s",
                  "TTFT p50/p90/p99 ms", "TPOT p50/p90/p99 ms", "ITL p50/p99 ms", "E2E p50/p90/p99 s"]
        rows = []
        for p in result.load:
            m = p.summary
            rows.append([point_label(p) + (" (stopped at deadline)" if p.stopped_by_deadline else ""),
                         str(m.completed), str(m.failed), str(m.not_sent), f"{m.request_throughput:.2f}",
                         f"{m.output_throughput:.1f}", f"{m.total_token_throughput:.1f}",
                         "/".join(_ms(m.ttft, q) for q in ("p50", "p90", "p99")),
                         "/".join(_ms(m.tpot, q) for q in ("p50", "p90", "p99")),
                         "/".join(_ms(m.itl, q) for q in ("p50", "p99")),
                         "/".join(_s(m.e2e, q) for q in ("p50", "p90", "p99"))])
        lines += _table(header, rows)
        error_rows = [[point_label(p), kind, str(n)] for p in result.load for kind, n in p.summary.errors.items()]
        error_rows += [[point_label(p), "malformed SSE lines (requests kept)", str(p.summary.malformed_sse_lines)]
                       for p in result.load if p.summary.malformed_sse_lines]
        lines += ["", "### Errors", ""]
        lines += _table(["point", "kind", "count"], error_rows) if error_rows else ["none"]
    if result.perplexity is not None:
        p = result.perplexity
        lines += ["", "## Perplexity", ""]
        lines += _table(["text", "tokenizer", "api", "window/stride", "windows ok", "scored tokens", "perplexity"],
                        [_ppl_cells(p)])
        if p.errors:
            lines += ["", "Window errors: " + ", ".join(f"{k} {v}" for k, v in p.errors.items())
                      + " (perplexity over the windows that scored)"]
    if result.notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in result.notes)]
    return "\n".join(lines) + "\n"


def _rel(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0:
        return "-"
    return f"{(b - a) / a * 100:+.1f}%"


def _quantile(attr: str, q: str, scale: float, summary: RunSummary) -> float | None:
    dist = getattr(summary, attr)
    return None if dist is None else getattr(dist, q) * scale


_METRICS: list[tuple[str, Callable[[RunSummary], float | None], str]] = [
    ("requests ok", lambda m: m.completed, "{:.0f}"),
    ("requests failed", lambda m: m.failed + m.not_sent, "{:.0f}"),
    ("request throughput (req/s)", lambda m: m.request_throughput, "{:.2f}"),
    ("output throughput (tok/s)", lambda m: m.output_throughput, "{:.1f}"),
    ("total throughput (tok/s)", lambda m: m.total_token_throughput, "{:.1f}"),
    *[(f"{name} {q} ({unit})", partial(_quantile, attr, q, scale), fmt)
      for name, attr, unit, scale, fmt, qs in (("TTFT", "ttft", "ms", 1e3, "{:.1f}", ("p50", "p90", "p99")),
                                               ("TPOT", "tpot", "ms", 1e3, "{:.2f}", ("p50", "p90", "p99")),
                                               ("ITL", "itl", "ms", 1e3, "{:.2f}", ("p50", "p99")),
                                               ("E2E", "e2e", "s", 1.0, "{:.3f}", ("p50", "p90", "p99")))
      for q in qs],
]


def common_points(a: BenchResult, b: BenchResult) -> list[tuple[LoadPoint, LoadPoint]]:
    by_key = {point_key(p): p for p in b.load}
    return [(p, by_key[point_key(p)]) for p in a.load if point_key(p) in by_key]


def render_comparison(a: BenchResult, b: BenchResult) -> str:
    la, lb = a.label, b.label
    lines = [f"# Comparison: {la} vs {lb}", "",
             *_table(["", la, lb], [["endpoint", f"`{a.base_url}`", f"`{b.base_url}`"],
                                    ["model", f"`{a.model}`", f"`{b.model}`"],
                                    ["created (UTC)", a.created, b.created]])]
    sa, sb = a.load_settings, b.load_settings
    if sa and sb and (sa.input_len, sa.output_len, sa.prompt_source, sa.seed, sa.endpoint) != (
            sb.input_len, sb.output_len, sb.prompt_source, sb.seed, sb.endpoint):
        lines += ["", "**Warning:** the two runs used different request settings (lengths, prompts, seed or "
                      "endpoint); the comparison is not like for like."]
    for pa, pb in common_points(a, b):
        lines += ["", f"## Load at {point_label(pa)}", ""]
        rows = []
        for name, get, fmt in _METRICS:
            va, vb = get(pa.summary), get(pb.summary)
            rows.append([name, "-" if va is None else fmt.format(va), "-" if vb is None else fmt.format(vb),
                         _rel(va, vb)])
        lines += _table(["metric", la, lb, f"{lb} vs {la}"], rows)
    only = [f"{point_label(p)} only in {r.label}" for r, other in ((a, b), (b, a))
            for p in r.load if point_key(p) not in {point_key(q) for q in other.load}]
    if only:
        lines += ["", "Not compared: " + "; ".join(only)]
    if a.perplexity is not None and b.perplexity is not None:
        pa, pb = a.perplexity, b.perplexity
        lines += ["", "## Perplexity", ""]
        lines += _table(["", la, lb, f"{lb} vs {la}"], [
            ["perplexity", "-" if pa.perplexity is None else f"{pa.perplexity:.4f}",
             "-" if pb.perplexity is None else f"{pb.perplexity:.4f}", _rel(pa.perplexity, pb.perplexity)],
            ["scored tokens", str(pa.scored_tokens), str(pb.scored_tokens), _rel(pa.scored_tokens, pb.scored_tokens)],
            ["windows ok", f"{sum(w.error is None for w in pa.windows)}/{len(pa.windows)}",
             f"{sum(w.error is None for w in pb.windows)}/{len(pb.windows)}", ""],
        ])
        if pa.text_sha256 != pb.text_sha256 or (pa.window, pa.stride) != (pb.window, pb.stride):
            lines += ["", "**Warning:** different texts or windows; the perplexities are not comparable."]
        elif pa.scored_tokens != pb.scored_tokens:
            lines += ["", "**Note:** the servers scored different token counts (different tokenizers or failed "
                          "windows)."]
    return "\n".join(lines) + "\n"
