"""PNG plots with matplotlib's object API (no pyplot global state, no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vllm_autoround.format.files import write_atomic

from .report import point_key
from .schema import LoadPoint
from .stats import tpot


def _figure(ncols: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * ncols, 4.0), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: str | os.PathLike) -> Path:
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def plot_latency_cdf(series: Sequence[tuple[str, LoadPoint]], path: str | os.PathLike, title: str = "") -> Path:
    """Empirical CDFs of TTFT, TPOT and end-to-end latency of the successful requests, one line per series."""
    fig, axes = _figure(3)
    panels = [("TTFT (ms)", lambda r: r.ttft * 1e3 if r.ttft is not None else None),
              ("TPOT (ms)", lambda r: (t * 1e3) if (t := tpot(r)) is not None else None),
              ("end-to-end latency (s)", lambda r: r.e2e)]
    for ax, (xlabel, get) in zip(axes, panels, strict=True):
        for name, point in series:
            values = sorted(v for r in point.records if r.ok and (v := get(r)) is not None)
            if values:
                n = len(values)
                ax.step(values, [(i + 1) / n for i in range(n)], where="post", label=f"{name} (n={n})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _x_axis(points: Sequence[LoadPoint]) -> tuple[str, list[float] | None]:
    if all(p.request_rate is None and p.concurrency is not None for p in points):
        return "concurrency", [float(p.concurrency) for p in points]
    if all(p.request_rate is not None for p in points):
        return "request rate (req/s)", [float(p.request_rate) for p in points]
    return "run point", None


def plot_throughput(series: Sequence[tuple[str, Sequence[LoadPoint]]], path: str | os.PathLike,
                    title: str = "") -> Path:
    """Output throughput, median TTFT and median TPOT against concurrency (or request rate)."""
    fig, axes = _figure(3)
    panels = [("output throughput (tok/s)", lambda m: m.output_throughput),
              ("TTFT p50 (ms)", lambda m: m.ttft.p50 * 1e3 if m.ttft else None),
              ("TPOT p50 (ms)", lambda m: m.tpot.p50 * 1e3 if m.tpot else None)]
    all_points = [p for _, points in series for p in points]
    xlabel, _ = _x_axis(all_points)
    categories = sorted({point_key(p) for p in all_points}, key=lambda k: (k[0] or 0, k[1] or 0))
    for ax, (ylabel, get) in zip(axes, panels, strict=True):
        for name, points in series:
            points = sorted(points, key=lambda p: (p.concurrency or 0, p.request_rate or 0))
            label, xs = _x_axis(points)
            if label != xlabel or xs is None:
                xs = [float(categories.index(point_key(p))) for p in points]
            pairs = [(x, y) for x, p in zip(xs, points, strict=True) if (y := get(p.summary)) is not None]
            if pairs:
                ax.plot([x for x, _ in pairs], [y for _, y in pairs], marker="o", label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        if xlabel == "concurrency" and len(categories) > 2:
            from matplotlib.ticker import NullFormatter

            ticks = sorted({float(k[0]) for k in categories})
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
        elif xlabel == "run point":
            ax.set_xticks(range(len(categories)), [f"c={c} r={r}" for c, r in categories], fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
