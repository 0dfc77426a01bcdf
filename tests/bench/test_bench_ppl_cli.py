"""Perplexity arithmetic and the CLI (load, sweep, compare) against the scripted aiohttp server.

The fake server's logprobs depend only on the token (see fake_openai.py), so the expected totals are
computed here directly from the text, independently of the tool's windowing code.
"""

from __future__ import annotations

import math
import re
import time

import pytest

from vllm_autoround.bench.__main__ import main
from vllm_autoround.bench.perplexity import text_windows
from vllm_autoround.bench.prompts import corpus_text
from vllm_autoround.bench.schema import decode


def token_id(ch: str) -> int:  # the fake server's tokenizer
    return ord(ch) % 997


def logprob(tok: int) -> float:  # the fake server's model
    return -((tok % 13) + 1) / 4.0


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ppl") / "text.txt"
    path.write_text(corpus_text()[:2500], encoding="utf-8")
    return path


def _ppl(url, tmp_path, text_file, model="fake", *extra):
    out = tmp_path / "out"
    rc = main(["ppl", "--base-url", url, "--model", model, "--ppl-text", str(text_file), "--out", str(out),
               "--no-progress", *extra])
    return rc, out, (decode((out / "result.json").read_bytes()) if (out / "result.json").exists() else None)


@pytest.mark.parametrize("api", ["prompt_logprobs", "echo"])
def test_sliding_windows_score_each_token_once(fake_url, tmp_path, text_file, api):
    ids = [token_id(c) for c in text_file.read_text()]
    rc, out, result = _ppl(fake_url, tmp_path, text_file, "fake", "--ppl-window", "100", "--ppl-stride", "37",
                           "--ppl-max-windows", "0", "--ppl-api", api)
    p = result.perplexity
    assert rc == 0 and p.complete and p.api == api and p.tokenizer == "server"
    assert p.total_tokens == len(ids) and p.scored_tokens == len(ids) - 1
    expected_nll = -math.fsum(logprob(t) for t in ids[1:])
    assert p.nll == pytest.approx(expected_nll, rel=1e-12)
    assert p.perplexity == pytest.approx(math.exp(expected_nll / (len(ids) - 1)), rel=1e-12)
    assert all(w.prompt_tokens_reported == w.tokens_sent for w in p.windows)
    assert f"{p.perplexity:.4f}" in (out / "report.md").read_text()


def test_disjoint_windows_and_auto_fallback_to_echo(fake_url, tmp_path, text_file):
    ids = [token_id(c) for c in text_file.read_text()]
    rc, _, result = _ppl(fake_url, tmp_path, text_file, "fake?plp=0", "--ppl-window", "300", "--ppl-max-windows",
                         "0")
    p = result.perplexity
    assert rc == 0 and p.api == "echo"  # prompt_logprobs was refused with a 400
    windows = [ids[b:b + 300] for b in range(0, len(ids), 300)]
    assert p.scored_tokens == sum(len(w) - 1 for w in windows) == len(ids) - len(windows)
    assert p.nll == pytest.approx(-math.fsum(logprob(t) for w in windows for t in w[1:]), rel=1e-12)


def test_max_windows_tokenizes_only_a_prefix(fake_url, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text(corpus_text()[:60_000], encoding="utf-8")
    rc, _, result = _ppl(fake_url, tmp_path, big, "fake", "--ppl-window", "50", "--ppl-max-windows", "4")
    p = result.perplexity
    ids = [token_id(c) for c in big.read_text()[:200]]
    assert rc == 0 and len(p.windows) == 4 and p.scored_tokens == 4 * 49
    assert p.total_tokens < 60_000  # a prefix was tokenized, not the whole file
    assert p.nll == pytest.approx(-math.fsum(logprob(t) for b in range(0, 200, 50) for t in ids[b + 1:b + 50]))


def test_text_windows_without_tokenizer_use_server_counts(fake_url, tmp_path, text_file):
    text = text_file.read_text()
    rc, _, result = _ppl(fake_url, tmp_path, text_file, "fake?tokenize=0", "--ppl-window", "400",
                         "--ppl-max-windows", "0")
    p = result.perplexity
    pieces = text_windows(text, 400)
    assert rc == 0 and p.tokenizer == "none" and p.api == "prompt_logprobs" and len(p.windows) == len(pieces)
    assert [w.prompt_tokens_reported for w in p.windows] == [len(piece) for piece in pieces]
    assert p.scored_tokens == sum(len(piece) - 1 for piece in pieces)
    assert p.nll == pytest.approx(-math.fsum(logprob(token_id(c)) for piece in pieces for c in piece[1:]))
    assert any("no tokenizer" in note for note in result.notes)


def test_failed_windows_are_counted_and_excluded(fake_url, tmp_path, text_file):
    ids = [token_id(c) for c in text_file.read_text()]
    rc, out, result = _ppl(fake_url, tmp_path, text_file, "fake?fail_every=3", "--ppl-window", "200",
                           "--ppl-max-windows", "0", "--ppl-api", "prompt_logprobs")
    p = result.perplexity
    bad = [w for w in p.windows if w.error]
    good = [w for w in p.windows if not w.error]
    assert rc == 0 and not p.complete and bad and good
    assert p.errors == {"http_500": len(bad)}
    expected = -math.fsum(logprob(t) for w in good for t in ids[w.first_token + 1:w.first_token + 200])
    assert p.nll == pytest.approx(expected) and p.scored_tokens == sum(w.scored_tokens for w in good)
    assert "Window errors: http_500" in (out / "report.md").read_text()


def _metric(markdown: str, section: str, name: str) -> list[str]:
    body = markdown.split(f"## {section}", 1)[1]
    row = next(line for line in body.splitlines() if line.startswith(f"| {name} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def test_sweep_then_compare_endpoints_and_files(fake_url, tmp_path, text_file):
    fast, slow = "fake?ttft=0.2&tpot=0.005", "fake?ttft=0.4&tpot=0.01"
    out = tmp_path / "cmp"
    rc = main(["compare", "--base-url", fake_url, "--base-url", fake_url + "/v1", "--model", fast, "--model", slow,
               "--label", "fast", "--label", "slow", "--concurrency", "1,2", "--num-prompts", "4",
               "--input-len", "uniform:5,20", "--output-len", "6", "--ppl-text", str(text_file),
               "--ppl-window", "256", "--ppl-max-windows", "3", "--out", str(out), "--no-progress"])
    assert rc == 0
    for side in ("a", "b"):
        for name in ("result.json", "report.md", "latency_cdf.png", "throughput.png"):
            assert (out / side / name).stat().st_size > 0
    for name in ("compare_latency_cdf.png", "compare_throughput.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    a = decode((out / "a" / "result.json").read_bytes())
    b = decode((out / "b" / "result.json").read_bytes())
    assert [(p.concurrency, p.summary.completed) for p in a.load] == [(1, 4), (2, 4)]
    # same seed and point: both sides got exactly the same prompts
    assert [r.prompt_tokens for r in a.load[1].records] == [r.prompt_tokens for r in b.load[1].records]
    assert len({r.prompt_tokens for r in a.load[0].records}) > 1  # drawn from the distribution
    md = (out / "compare.md").read_text()
    name, va, vb, rel = _metric(md, "Load at concurrency 2", "TTFT p50 (ms)")
    assert float(va) == pytest.approx(200, rel=0.05) and float(vb) == pytest.approx(400, rel=0.05)
    assert 85 < float(rel.rstrip("%")) < 115
    assert _metric(md, "Perplexity", "perplexity")[3] == "+0.0%"

    again = tmp_path / "again"
    rc = main(["compare", str(out / "a" / "result.json"), str(out / "b" / "result.json"), "--label", "before",
               "--label", "after", "--out", str(again)])
    assert rc == 0
    md2 = (again / "compare.md").read_text()
    assert "# Comparison: before vs after" in md2
    assert _metric(md2, "Load at concurrency 1", "requests ok")[1:3] == ["4", "4"]
    assert (again / "compare_throughput.png").exists()


def test_compare_rejects_a_file_that_is_not_a_result(tmp_path, capsys):
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"x": 1}')
    rc = main(["compare", str(bogus), str(bogus), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and re.match(rf"error: {re.escape(str(bogus))}: not a vllm-autoround-bench result", err)
    assert "\n" not in err


def test_prompt_file_and_bad_prompt_file(fake_url, tmp_path, capsys):
    good = tmp_path / "prompts.jsonl"
    good.write_text('{"prompt": "hello there", "output_len": 3}\n\n{"prompt": [5, 6, 7]}\n')
    rc = main(["load", "--base-url", fake_url, "--model", "fake", "--prompts", str(good), "--num-prompts", "4",
               "--output-len", "5", "--concurrency", "2", "--warmup", "0", "--out", str(tmp_path / "o"),
               "--no-progress"])
    result = decode((tmp_path / "o" / "result.json").read_bytes())
    assert rc == 0 and sorted(r.output_tokens for r in result.load[0].records) == [3, 3, 5, 5]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"nothing": 1}\n')
    rc = main(["load", "--base-url", fake_url, "--model", "fake", "--prompts", str(bad), "--out",
               str(tmp_path / "o2"), "--no-progress"])
    assert rc == 2 and capsys.readouterr().err.strip().startswith(f"error: {bad}:2:")


def test_global_deadline_bounds_the_whole_invocation(fake_url, tmp_path):
    t0 = time.monotonic()
    rc = main(["load", "--base-url", fake_url, "--model", "fake?ttft=0.1&tpot=0.1", "--tokenizer", "none",
               "--concurrency", "2,4", "--num-prompts", "10", "--output-len", "30", "--warmup", "0",
               "--ppl-text", "builtin", "--max-duration", "1.5", "--out", str(tmp_path), "--no-progress"])
    assert time.monotonic() - t0 < 3.5
    result = decode((tmp_path / "result.json").read_bytes())
    assert rc == 1  # nothing finished: every request needs 3 s
    assert len(result.load) == 1 and result.load[0].stopped_by_deadline
    assert result.load[0].summary.errors == {"deadline": 2} and result.load[0].summary.not_sent == 8
    assert result.perplexity is None
    assert any("concurrency 4" in note for note in result.notes)
    assert any("perplexity not measured" in note for note in result.notes)


def test_window_longer_than_the_server_context_is_refused_up_front(fake_url, tmp_path, capsys):
    rc = main(["ppl", "--base-url", fake_url, "--model", "fake", "--ppl-text", "builtin", "--ppl-window", "4096",
               "--out", str(tmp_path)])
    assert rc == 2 and "max_model_len is 4096" in capsys.readouterr().err
    assert not (tmp_path / "result.json").exists()


def test_heldout_text_is_the_brown_genre_calibration_never_sees(fake_url, tmp_path):
    from vllm_autoround.bench.perplexity import read_text
    from vllm_autoround.quantize.corpus import brown_documents

    heldout = read_text("heldout")
    calibration = brown_documents("calibration")
    assert len(heldout) > 400_000 and not any(doc[:200] in heldout for doc in calibration)
    rc, _, result = _ppl(fake_url, tmp_path, "heldout", "fake", "--ppl-window", "100", "--ppl-max-windows", "3")
    ids = [token_id(c) for c in heldout[:300]]
    expected_nll = -math.fsum(logprob(t) for w in range(3) for t in ids[w * 100 + 1 : (w + 1) * 100])
    assert rc == 0 and result.perplexity.scored_tokens == 3 * 99
    assert result.perplexity.nll == pytest.approx(expected_nll, rel=1e-12)
