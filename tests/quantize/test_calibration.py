"""Calibration data: every accepted source, reproducible sampling, the built-in text, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from vllm_autoround.format.errors import FormatError
from vllm_autoround.quantize.calibration import calibration_tokens, default_corpus, load_tokenizer, read_documents
from vllm_autoround.quantize.corpus import brown_documents


@pytest.fixture(scope="module")
def tokenizer(toy_llama):
    return load_tokenizer(toy_llama)


def test_default_corpus_is_real_english_prose():
    text = " ".join(default_corpus())
    words = text.split()
    assert len(words) > 800_000  # enough for the default recipe's 128 x 2048 tokens without overlap
    common = sum(words.count(w) for w in ("the", "of", "and", "to", "is"))
    assert common > 0.08 * len(words)  # function words: prose, not code or random tokens


def test_heldout_split_is_disjoint_from_calibration():
    calibration, heldout = brown_documents("calibration"), brown_documents("heldout")
    assert len(calibration) == 456 and len(heldout) == 44  # Brown: 500 files, genre A press has 44
    assert heldout[0].startswith("The Fulton County Grand Jury said Friday")
    assert not set(calibration) & set(heldout)
    assert default_corpus() == calibration
    with pytest.raises(ValueError, match="unknown corpus split 'train'"):
        brown_documents("train")


def test_every_file_kind_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("plain text file\n\nwith two paragraphs")
    (tmp_path / "b.jsonl").write_text('"a json string"\n{"text": "an object"}\n\n{"input_ids": [5, 6, 7]}\n')
    (tmp_path / "c.json").write_text(json.dumps(["one", {"text": "two"}]))
    (tmp_path / "ignored.csv").write_text("x,y")
    assert read_documents(tmp_path / "a.txt") == ["plain text file\n\nwith two paragraphs"]
    assert read_documents(tmp_path / "b.jsonl") == ["a json string", "an object", [5, 6, 7]]
    assert read_documents(tmp_path) == ["plain text file\n\nwith two paragraphs", "a json string", "an object",
                                        [5, 6, 7], "one", "two"]


@pytest.mark.parametrize("content, suffix, message", [
    ('{"text": 3}\n', ".jsonl", r"x\.jsonl:1: expected a string or an object"),
    ('{"text": "ok"}\n{oops\n', ".jsonl", r"x\.jsonl:2: malformed JSON"),
    ('{"a": 1}', ".json", r"x\.json: expected a JSON list"),
    ("x", ".csv", r"x\.csv: unsupported calibration file type"),
])
def test_malformed_files_are_named(tmp_path, content, suffix, message):
    path = tmp_path / f"x{suffix}"
    path.write_text(content)
    with pytest.raises(FormatError, match=message):
        read_documents(path)


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(FormatError, match="nope.txt: calibration dataset not found"):
        read_documents(tmp_path / "nope.txt")
    with pytest.raises(FormatError, match="no .txt/.jsonl/.json calibration files"):
        read_documents(tmp_path)


def _prefix_len(tokenizer) -> int:
    return len(tokenizer("x")["input_ids"]) - len(tokenizer("x", add_special_tokens=False)["input_ids"])


def _find(stream: list[int], body: list[int]) -> int:
    """Where ``body`` occurs in ``stream`` (first position), -1 if nowhere."""
    for i in range(len(stream) - len(body) + 1):
        if stream[i] == body[0] and stream[i : i + len(body)] == body:
            return i
    return -1


def test_windows_are_reproducible_slices_of_the_text(tokenizer):
    a = calibration_tokens(tokenizer, None, nsamples=6, seqlen=32, seed=1)
    assert a.shape == (6, 32) and a.dtype == torch.long
    assert torch.equal(a, calibration_tokens(tokenizer, None, nsamples=6, seqlen=32, seed=1))
    assert not torch.equal(a, calibration_tokens(tokenizer, None, nsamples=6, seqlen=32, seed=2))
    n = _prefix_len(tokenizer)
    assert a[:, :n].tolist() == [tokenizer("x")["input_ids"][:n]] * 6  # e.g. BOS, as the tokenizer adds it
    stream = []
    for doc in default_corpus():
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    for row in a.tolist():
        assert _find(stream, row[n:]) >= 0


def test_text_file_windows_do_not_overlap_when_text_suffices(tokenizer, tmp_path):
    text = " ".join(f"w{i}" for i in range(3000))
    path = tmp_path / "t.txt"
    path.write_text(text)
    tokens = calibration_tokens(tokenizer, path, nsamples=4, seqlen=40, seed=0)
    n = _prefix_len(tokenizer)
    stream = tokenizer(text, add_special_tokens=False)["input_ids"]
    starts = sorted(_find(stream, row[n:]) for row in tokens.tolist())
    assert starts[0] >= 0
    assert all(b - a >= 40 - n for a, b in zip(starts, starts[1:], strict=False))


def test_too_little_text_overlaps_with_a_warning(tokenizer, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("a short text that is only a few dozen tokens long, " * 3)
    with pytest.warns(UserWarning, match="samples overlap"):
        tokens = calibration_tokens(tokenizer, path, nsamples=5, seqlen=16, seed=0)
    assert tokens.shape == (5, 16)
    with pytest.raises(FormatError, match="short.txt: only .* tokens of text"):
        calibration_tokens(tokenizer, path, nsamples=1, seqlen=4096, seed=0)


def test_pretokenized_documents_are_used_exactly(tmp_path):
    rows = [[i] * 10 + [i + 1] * 2 for i in range(5)]
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows + [[9, 9]]))
    tokens = calibration_tokens(None, path, nsamples=4, seqlen=11, seed=0)
    assert tokens.tolist() == [r[:11] for r in rows[:4]]
    with pytest.raises(FormatError, match="5 input_ids documents have >= 11 tokens; --nsamples 6"):
        calibration_tokens(None, path, nsamples=6, seqlen=11, seed=0)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "x"}\n{"input_ids": [1, 2]}\n')
    with pytest.raises(FormatError, match="mixes"):
        calibration_tokens(None, mixed, nsamples=1, seqlen=2, seed=0)
    with pytest.raises(FormatError, match="needs the model's tokenizer"):
        calibration_tokens(None, None, nsamples=1, seqlen=8, seed=0)
