"""Load generator against a real aiohttp server on loopback with known delays and scripted faults."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from vllm_autoround.bench.__main__ import main
from vllm_autoround.bench.client import Endpoint, Prompt, RequestOptions, new_session
from vllm_autoround.bench.load import Budget, poisson_arrivals, run_point
from vllm_autoround.bench.schema import decode


def _run_point(url, model, *, n, concurrency, out_len=8, rate=None, timeout=10.0, budget=None, chat=False,
               seed=0):
    async def go():
        prompts = [Prompt(output_len=out_len, text=f"prompt {i}") for i in range(n)]
        async with new_session() as session:
            return await run_point(session, Endpoint(url, model), prompts,
                                   RequestOptions(endpoint_kind="chat" if chat else "completions"),
                                   concurrency=concurrency, request_rate=rate, request_timeout=timeout,
                                   budget=budget or Budget(), seed=seed, progress=False)

    return asyncio.run(go())


TTFT, TPOT = 0.4, 0.04


@pytest.mark.parametrize("chat", [False, True])
def test_latency_and_throughput_arithmetic_within_5_percent(fake_url, chat):
    n, conc, out = 8, 4, 8
    # headers come late (as from servers that send them with the first token): TTFT counts from the request
    point = _run_point(fake_url, f"fake?ttft={TTFT}&tpot={TPOT}&hdelay=0.3", n=n, concurrency=conc, out_len=out,
                       chat=chat)
    m = point.summary
    assert (m.completed, m.failed, m.errors) == (n, 0, {})
    assert all(r.output_tokens == out and r.output_tokens_source == "usage" for r in point.records)
    e2e = TTFT + (out - 1) * TPOT
    waves = n // conc
    assert m.ttft.mean == pytest.approx(TTFT, rel=0.05) and m.ttft.p90 == pytest.approx(TTFT, rel=0.05)
    assert m.tpot.mean == pytest.approx(TPOT, rel=0.05)
    assert m.itl.p50 == pytest.approx(TPOT, rel=0.05) and m.itl.count == n * (out - 1)
    assert m.e2e.mean == pytest.approx(e2e, rel=0.05)
    assert m.duration_s == pytest.approx(waves * e2e, rel=0.05)
    assert m.request_throughput == pytest.approx(n / (waves * e2e), rel=0.05)
    assert m.output_throughput == pytest.approx(n * out / (waves * e2e), rel=0.05)
    # never more than `conc` requests in flight: the second wave starts after the first ends
    starts = sorted(r.start for r in point.records)
    assert starts[conc] >= starts[0] + e2e * 0.95


def test_tokens_counted_from_usage_when_chunks_carry_several(start_fake_server):
    with start_fake_server() as (url, _):
        point = _run_point(url, f"fake?ttft={TTFT}&tpot={TPOT}&per_chunk=2", n=2, concurrency=2, out_len=8)
        no_usage = _run_point(url, "fake?ttft=0&tpot=0.01&per_chunk=2&usage=0", n=2, concurrency=2, out_len=8)
    m = point.summary
    assert all(r.output_tokens == 8 and len(r.itl) == 3 for r in point.records)
    assert m.ttft.mean == pytest.approx(TTFT + TPOT, rel=0.05)  # the first event carries tokens 0 and 1
    assert m.tpot.mean == pytest.approx(6 * TPOT / 7, rel=0.05)
    assert m.itl.mean == pytest.approx(2 * TPOT, rel=0.05)
    assert all(r.output_tokens == 4 and r.output_tokens_source == "chunks" for r in no_usage.records)


def test_poisson_arrivals_are_followed(fake_url):
    rate, n, seed = 10.0, 12, 7
    point = _run_point(fake_url, "fake?ttft=0.01&tpot=0.001", n=n, concurrency=None, rate=rate, seed=seed)
    assert point.summary.completed == n
    planned = poisson_arrivals(n, rate, seed)
    for rec, at in zip(point.records, planned, strict=True):
        assert rec.start == pytest.approx(at, abs=0.03)


@pytest.mark.parametrize("mode,kind", [
    ("http500", "http_500"), ("http400", "http_400"), ("http429", "http_429"),
    ("drop&after=2", "disconnected"), ("noend", "incomplete_stream"), ("api_error", "api_error"),
])
def test_failures_are_counted_by_kind(fake_url, mode, kind):
    point = _run_point(fake_url, f"fake?tpot=0.001&mode={mode}", n=5, concurrency=2)
    m = point.summary
    assert (m.completed, m.failed, m.errors) == (0, 5, {kind: 5})
    assert all(r.error_detail for r in point.records)
    if kind == "disconnected":  # partial timings survive
        assert all(r.ttft is not None and r.output_tokens == 2 for r in point.records)


def test_malformed_sse_lines_are_counted_and_the_stream_still_measured(fake_url):
    point = _run_point(fake_url, "fake?tpot=0.001&mode=malformed", n=4, concurrency=2)
    assert point.summary.completed == 4
    assert point.summary.malformed_sse_lines == 4 * 3
    assert all(r.malformed_lines == 3 and r.output_tokens == 8 for r in point.records)


def test_api_key_comes_from_the_environment(fake_url, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert _run_point(fake_url, "fake?key=s3cret", n=2, concurrency=2).summary.errors == {"http_401": 2}
    monkeypatch.setenv("OPENAI_API_KEY", "s3cret")
    assert _run_point(fake_url, "fake?key=s3cret", n=2, concurrency=2).summary.completed == 2


def test_hanging_server_hits_the_request_timeout(fake_url):
    t0 = time.monotonic()
    point = _run_point(fake_url, "fake?mode=hang", n=4, concurrency=4, timeout=0.5)
    assert time.monotonic() - t0 < 2.0
    assert point.summary.errors == {"timeout": 4}


def test_global_deadline_stops_the_run_and_keeps_partial_records(fake_url):
    t0 = time.monotonic()
    point = _run_point(fake_url, "fake?ttft=0.1&tpot=0.2", n=8, concurrency=2, out_len=20,
                       budget=Budget.from_duration(0.8))
    assert time.monotonic() - t0 < 1.6
    m = point.summary
    assert point.stopped_by_deadline
    assert (m.completed, m.errors, m.not_sent) == (0, {"deadline": 2}, 6)
    assert all(r.ttft == pytest.approx(0.1, abs=0.05) and r.output_tokens >= 3 for r in point.records)


def test_unreachable_server_fails_fast_with_a_one_line_error(tmp_path, capsys, start_fake_server):
    with start_fake_server() as (url, _):
        pass  # a port that was just closed
    t0 = time.monotonic()
    rc = main(["load", "--base-url", url, "--out", str(tmp_path), "--no-progress"])
    assert rc == 1 and time.monotonic() - t0 < 10
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: connect") and "\n" not in err and "--model" in err


def test_server_dying_mid_run_gives_partial_results(tmp_path, start_fake_server):
    with start_fake_server() as (url, proc):
        killer = threading.Timer(1.5, proc.kill)
        killer.start()
        t0 = time.monotonic()
        try:
            rc = main(["load", "--base-url", url, "--model", "fake?ttft=0.05&tpot=0.05", "--tokenizer", "none",
                       "--concurrency", "2", "--num-prompts", "30", "--output-len", "10", "--warmup", "0",
                       "--request-timeout", "5", "--max-duration", "60", "--out", str(tmp_path), "--no-progress"])
        finally:
            killer.cancel()
    assert time.monotonic() - t0 < 10
    assert rc == 0
    result = decode((tmp_path / "result.json").read_bytes())
    m = result.load[0].summary
    assert m.completed >= 2 and m.completed + m.failed == 30
    assert set(m.errors) <= {"disconnected", "connect"} and m.errors.get("connect", 0) > 0
    assert "connect" in (tmp_path / "report.md").read_text()
