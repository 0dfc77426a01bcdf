"""Arithmetic of a run: per-request TPOT, percentiles and throughputs over the successful requests."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from .schema import Distribution, RequestRecord, RunSummary


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def distribution(values: Sequence[float]) -> Distribution | None:
    if not values:
        return None
    ordered = sorted(values)
    mean = sum(ordered) / len(ordered)
    var = sum((v - mean) ** 2 for v in ordered) / len(ordered)
    return Distribution(count=len(ordered), mean=mean, std=math.sqrt(var), min=ordered[0],
                        p50=percentile(ordered, 50), p90=percentile(ordered, 90), p99=percentile(ordered, 99),
                        max=ordered[-1])


def tpot(rec: RequestRecord) -> float | None:
    """Time per output token after the first: (e2e - ttft) / (tokens - 1)."""
    if not rec.ok or rec.ttft is None or rec.e2e is None or rec.output_tokens < 2:
        return None
    return (rec.e2e - rec.ttft) / (rec.output_tokens - 1)


def summarize(records: Sequence[RequestRecord], not_sent: int = 0) -> RunSummary:
    """Summary over one run point. Duration runs from the first request sent to the last answer."""
    ok = [r for r in records if r.ok]
    sent = [r for r in records if r.e2e is not None or r.ok or r.error is not None]
    errors = Counter(r.error for r in records if not r.ok and r.error is not None)
    unknown = sum(1 for r in records if not r.ok and r.error is None)
    if unknown:
        errors["unknown"] += unknown
    if sent:
        first = min(r.start for r in sent)
        last = max(r.start + (r.e2e or 0.0) for r in sent)
        duration = max(last - first, 0.0)
    else:
        duration = 0.0
    out_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)
    return RunSummary(
        completed=len(ok), failed=len(records) - len(ok), not_sent=not_sent, errors=dict(sorted(errors.items())),
        malformed_sse_lines=sum(r.malformed_lines for r in records), duration_s=duration,
        request_throughput=per_s(len(ok)), output_throughput=per_s(out_tokens),
        total_token_throughput=per_s(out_tokens + prompt_tokens),
        total_prompt_tokens=prompt_tokens, total_output_tokens=out_tokens,
        ttft=distribution([r.ttft for r in ok if r.ttft is not None]),
        tpot=distribution([t for r in ok if (t := tpot(r)) is not None]),
        itl=distribution([x for r in ok for x in r.itl]),
        e2e=distribution([r.e2e for r in ok if r.e2e is not None]),
    )
