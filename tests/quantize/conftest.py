"""Quantizer fixtures. ``signround_checkpoint`` is a real SignRound W4 g32 sym checkpoint of the toy Llama;
the serving end-to-end test can use it (or call ``tests.quantize.signround_helpers.make_signround_checkpoint``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.quantize.signround_helpers import make_signround_checkpoint


@pytest.fixture(scope="session")
def signround_checkpoint(toy_llama, tmp_path_factory) -> Path:
    return make_signround_checkpoint(toy_llama, tmp_path_factory.mktemp("signround") / "w4g32")
