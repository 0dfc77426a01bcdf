"""Pure parts of the bench: SSE parsing, length specs, statistics, windows, schema, atomic writes."""

from __future__ import annotations

import os
import random

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_autoround.bench.lengths import LengthSpec
from vllm_autoround.bench.load import poisson_arrivals
from vllm_autoround.bench.perplexity import text_windows, token_windows
from vllm_autoround.bench.schema import BenchResult, RequestRecord, decode, encode
from vllm_autoround.bench.sse import SSEParser
from vllm_autoround.bench.stats import percentile, summarize, tpot
from vllm_autoround.format.files import write_atomic, write_text_atomic

STREAM = (b": keep-alive\r\n\r\n"
          b"data: {\"a\": 1}\r\n\r\n"
          b"event: message\ndata: line1\ndata: line2\n\n"
          b"garbage without colon\n\n"
          b"bogusfield: x\n\n"
          b"data: caf\xc3\xa9\n\n"
          b"\xff\xfe\n\n"
          b"data:[DONE]\n\n")
EXPECTED = ['{"a": 1}', "line1\nline2", "café", "[DONE]"]


def _parse_in_pieces(data: bytes, cuts: list[int]) -> tuple[list[str], int]:
    parser = SSEParser()
    events, last = [], 0
    for cut in sorted(cuts) + [len(data)]:
        events += parser.feed(data[last:cut])
        last = cut
    return events + parser.close(), parser.malformed_lines


def test_sse_events_and_malformed_lines_counted():
    events, malformed = _parse_in_pieces(STREAM, [])
    assert events == EXPECTED
    assert malformed == 3  # no-colon line, unknown field, non-UTF-8 bytes


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_sse_chunk_boundaries_do_not_matter(cuts):
    assert _parse_in_pieces(STREAM, cuts) == (EXPECTED, 3)


def test_sse_unterminated_last_event_is_delivered_on_close():
    parser = SSEParser()
    assert parser.feed(b"data: tail") == []
    assert parser.close() == ["tail"]


def test_sse_runaway_line_is_dropped_and_counted():
    parser = SSEParser(max_line_bytes=100)
    assert parser.feed(b"data: " + b"x" * 200) == []
    assert parser.malformed_lines == 1
    assert parser.feed(b"\n\ndata: ok\n\n") == ["ok"]


@pytest.mark.parametrize("text,kind,params", [
    ("128", "fixed", (128.0,)), ("uniform:4,9", "uniform", (4.0, 9.0)),
    ("normal:100,10", "normal", (100.0, 10.0)), ("exponential:50", "exponential", (50.0,)),
])
def test_length_spec_parse_and_round_trip(text, kind, params):
    spec = LengthSpec.parse(text)
    assert (spec.kind, spec.params) == (kind, params)
    assert LengthSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("bad", ["0", "1.5", "uniform:9,4", "uniform:3", "normal:x,1", "zipf:3", "", "-4"])
def test_length_spec_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="length spec"):
        LengthSpec.parse(bad)


def test_length_samples_follow_the_distribution():
    rng = random.Random(1)
    assert set(LengthSpec.parse("7").sample(rng, 50)) == {7}
    uni = LengthSpec.parse("uniform:4,9").sample(rng, 4000)
    assert min(uni) == 4 and max(uni) == 9
    normal = LengthSpec.parse("normal:100,10").sample(rng, 4000)
    assert abs(np.mean(normal) - 100) < 1.0 and abs(np.std(normal) - 10) < 1.0
    expo = LengthSpec.parse("exponential:50").sample(rng, 4000)
    assert min(expo) >= 1 and abs(np.mean(expo) - 50) < 3.0
    assert max(LengthSpec.parse("normal:100,50").sample(rng, 500, cap=120)) == 120
    assert LengthSpec.parse("uniform:1,1000").sample(random.Random(5), 20) == \
        LengthSpec.parse("uniform:1,1000").sample(random.Random(5), 20)


def test_poisson_arrivals_have_exponential_gaps():
    times = poisson_arrivals(20000, 8.0, seed=3)
    gaps = np.diff(times)
    assert times[0] == 0.0 and np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(1 / 8.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # exponential: CV = 1
    assert poisson_arrivals(5, None, 0) == [0.0] * 5
    assert poisson_arrivals(5, float("inf"), 0) == [0.0] * 5


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=50),
       st.sampled_from([0, 1, 50, 90, 99, 100]))
def test_percentile_matches_numpy(values, q):
    assert percentile(sorted(values), q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-6)


def _rec(i, start, ttft, e2e, tokens, ok=True, error=None, prompt=10):
    return RequestRecord(index=i, start=start, ttft=ttft, e2e=e2e, output_tokens=tokens, ok=ok, error=error,
                         prompt_tokens=prompt, itl=[(e2e - ttft) / (tokens - 1)] * (tokens - 1) if ok else [])


def test_summary_arithmetic_on_known_records():
    records = [_rec(0, 0.0, 0.5, 1.5, 11), _rec(1, 0.5, 0.25, 2.25, 5),
               _rec(2, 1.0, None, 0.1, 0, ok=False, error="http_500"),
               _rec(3, 1.0, None, 9.0, 0, ok=False, error="timeout")]
    assert tpot(records[0]) == pytest.approx(0.1) and tpot(records[1]) == pytest.approx(0.5)
    assert tpot(records[2]) is None
    m = summarize(records, not_sent=2)
    assert (m.completed, m.failed, m.not_sent) == (2, 2, 2)
    assert m.errors == {"http_500": 1, "timeout": 1}
    assert m.duration_s == pytest.approx(10.0)  # first start 0.0 -> last end 1.0 + 9.0
    assert m.request_throughput == pytest.approx(0.2)
    assert m.output_throughput == pytest.approx(1.6)
    assert m.total_token_throughput == pytest.approx(3.6)
    assert m.ttft.mean == pytest.approx(0.375) and m.ttft.max == 0.5
    assert m.tpot.p50 == pytest.approx(0.3)
    assert m.itl.count == 14 and m.e2e.min == 1.5


def test_summary_of_nothing_is_zero_not_an_error():
    m = summarize([], not_sent=5)
    assert (m.completed, m.not_sent, m.request_throughput, m.ttft) == (0, 5, 0.0, None)


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 400), st.integers(2, 64), st.data())
def test_sliding_windows_score_every_token_but_the_first_once(n, window, data):
    stride = data.draw(st.integers(1, window))
    counts = [0] * n
    for begin, end, score_from in token_windows(n, window, stride):
        assert end - begin <= window and 1 <= score_from < end - begin
        for pos in range(begin + score_from, end):
            counts[pos] += 1
    if stride < window:
        assert counts == [0] + [1] * (n - 1)
    else:  # disjoint windows: the first token of each window has no context
        assert counts == [0 if i % window == 0 else 1 for i in range(n)]


def test_token_windows_limit_and_bad_arguments():
    assert len(token_windows(10_000, 100, 50, max_windows=3)) == 3
    for window, stride in ((1, 1), (10, 0), (10, 11)):
        with pytest.raises(ValueError, match="window"):
            token_windows(100, window, stride)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="ab \n", min_size=1, max_size=500), st.integers(4, 80))
def test_text_windows_cover_the_text(text, chars):
    pieces = text_windows(text, chars)
    def squeeze(t: str) -> str:
        return t.replace(" ", "").replace("\n", "")

    assert squeeze("".join(pieces)) == squeeze(text)  # only whitespace-only pieces are dropped
    assert all(p.strip() for p in pieces)
    assert all(len(p) <= chars for p in pieces)


def test_schema_round_trip_and_clear_errors(tmp_path):
    result = BenchResult(label="x", base_url="http://h", model="m", created="2025-01-01T00:00:00+00:00")
    assert decode(encode(result)) == result
    with pytest.raises(ValueError, match=r"^f\.json: not a vllm-autoround-bench result file"):
        decode(b'{"hello": 1}', source="f.json")
    data = msgspec.json.decode(encode(result))
    data["schema_version"] = 99
    with pytest.raises(ValueError, match="schema_version 99"):
        decode(msgspec.json.encode(data), source="g.json")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "report.md"
    write_text_atomic(target, "old")

    def failing(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(target, failing)
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["report.md"]
    assert os.stat(target).st_mode & 0o777 == 0o644
