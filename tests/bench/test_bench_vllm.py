"""The bench against a real ``vllm serve`` on the CPU (toy Llama, float32), checked against HF transformers.

One server for the whole module; request counts are small so that the module stays within a few minutes.
"""

from __future__ import annotations

import math

import pytest

from vllm_autoround.bench.__main__ import main
from vllm_autoround.bench.perplexity import text_windows
from vllm_autoround.bench.prompts import corpus_text
from vllm_autoround.bench.schema import decode

pytestmark = pytest.mark.slow

WINDOW = 128
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def served(toy_llama):
    from vllm_autoround.serving.launch import VLLMServer

    with VLLMServer(toy_llama, dtype="float32", max_model_len=512, extra_args=["--enforce-eager"]) as server:
        yield toy_llama, server.base_url


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "prose.txt"
    path.write_text(corpus_text()[:20_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def hf(served):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, _ = served
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def nll(ids: list[int]) -> float:
        """Sum of -log p(token | prefix) over ids[1:], in float32 like the server."""
        with torch.no_grad():
            x = torch.tensor([ids])
            return float(model(input_ids=x, labels=x).loss) * (len(ids) - 1)

    return tokenizer, nll


def test_load_sweep_and_perplexity_against_vllm(served, text_file, hf, tmp_path):
    _, url = served
    out = tmp_path / "run"
    rc = main(["load", "--base-url", url, "--concurrency", "1,2", "--num-prompts", "6", "--input-len", "32",
               "--output-len", "16", "--ppl-text", str(text_file), "--ppl-window", str(WINDOW),
               "--ppl-max-windows", "6", "--request-timeout", "60", "--max-duration", "300", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    for name in ("latency_cdf.png", "throughput.png"):
        assert (out / name).read_bytes()[:8] == PNG
    result = decode((out / "result.json").read_bytes())
    assert result.model == "model" and result.load_settings.prompt_tokens_exact
    assert [p.concurrency for p in result.load] == [1, 2]
    for point in result.load:
        m = point.summary
        assert (m.completed, m.failed, m.not_sent, m.errors) == (6, 0, 0, {})
        for rec in point.records:  # the server's own counts: exact prompt lengths, ignore_eos outputs
            assert (rec.prompt_tokens, rec.output_tokens, rec.output_tokens_source) == (32, 16, "usage")
            assert 0 < rec.ttft < rec.e2e and len(rec.itl) >= 1
        assert m.output_throughput == pytest.approx(6 * 16 / m.duration_s)
        assert 0 < m.tpot.p50 < m.e2e.p50
    report = (out / "report.md").read_text()
    assert "| concurrency 2 | 6 | 0 | 0 |" in report and "## Perplexity" in report

    tokenizer, nll = hf
    ids = tokenizer(text_file.read_text(), add_special_tokens=False)["input_ids"]
    windows = [ids[i * WINDOW:(i + 1) * WINDOW] for i in range(6)]
    p = result.perplexity
    assert p.complete and p.api == "prompt_logprobs" and p.tokenizer == "server"
    assert [w.prompt_tokens_reported for w in p.windows] == [WINDOW] * 6
    assert p.scored_tokens == 6 * (WINDOW - 1)
    ref = [nll(w) for w in windows]
    for got, want in zip(p.windows, ref, strict=True):
        assert got.nll == pytest.approx(want, rel=1e-3)
    hf_ppl = math.exp(sum(ref) / (6 * (WINDOW - 1)))
    assert p.perplexity == pytest.approx(hf_ppl, rel=0.01)
    assert 1.5 < p.perplexity < 1000  # a trained toy: far better than uniform over its 1024 tokens


def test_echo_api_and_text_windows_match_hf(served, text_file, hf, tmp_path):
    _, url = served
    tokenizer, nll = hf
    text = text_file.read_text()

    rc = main(["ppl", "--base-url", url, "--ppl-text", str(text_file), "--ppl-api", "echo", "--ppl-window",
               str(WINDOW), "--ppl-stride", "64", "--ppl-max-windows", "3", "--out", str(tmp_path / "echo"),
               "--no-progress"])
    p = decode((tmp_path / "echo" / "result.json").read_bytes()).perplexity
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # sliding windows: the first scores tokens 1..127, the next ones their last 64 tokens given 64 of context
    ref = nll(ids[:WINDOW])
    for k in (1, 2):
        window = ids[64 * k:64 * k + WINDOW]
        ref += nll(window) - nll(window[:64])
    assert rc == 0 and p.api == "echo" and p.scored_tokens == WINDOW - 1 + 2 * 64
    assert p.nll == pytest.approx(ref, rel=0.01)

    rc = main(["ppl", "--base-url", url, "--tokenizer", "none", "--ppl-text", str(text_file), "--ppl-window",
               "400", "--ppl-max-windows", "3", "--out", str(tmp_path / "text"), "--no-progress"])
    p = decode((tmp_path / "text" / "result.json").read_bytes()).perplexity
    pieces = [tokenizer(piece, add_special_tokens=False)["input_ids"] for piece in text_windows(text, 400, 3)]
    assert rc == 0 and p.tokenizer == "none"
    assert [w.prompt_tokens_reported for w in p.windows] == [len(x) for x in pieces]
    assert p.perplexity == pytest.approx(math.exp(sum(nll(x) for x in pieces) / sum(len(x) - 1 for x in pieces)),
                                         rel=0.01)
