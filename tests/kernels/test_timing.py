"""Rotated weight copies for graph timing (the timing itself needs a GPU: ci/gpu runs it)."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import checkpoint, prepared
from vllm_autoround.kernels import timing
from vllm_autoround.kernels.layout import dequantize_prepared


@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
def test_rotated_copies_exceed_l2_and_share_no_storage(monkeypatch, sym):
    monkeypatch.setattr(timing, "l2_bytes", lambda: 100_000)
    p = prepared(checkpoint(4, 32, sym, 256, 96))
    copies = timing.rotated_copies(p, factor=1.5)
    assert copies[0] is p
    assert len(copies) * timing.prepared_bytes(p) >= 1.5 * 100_000
    assert len(copies) - 1 < 1.5 * 100_000 / timing.prepared_bytes(p)  # no more than needed
    pointers = set()
    for q in copies:
        for t in (q.qweight, q.scales, q.counters) + ((q.zeros,) if not sym else ()):
            pointers.add(t.data_ptr())
        assert torch.equal(dequantize_prepared(q, torch.float32), dequantize_prepared(p, torch.float32))
        assert q.meta() == p.meta()
    assert len(pointers) == len(copies) * (3 if sym else 4)


def test_a_weight_larger_than_l2_still_gets_two_copies(monkeypatch):
    monkeypatch.setattr(timing, "l2_bytes", lambda: 1000)
    p = prepared(checkpoint(4, 32, True, 256, 96))
    assert len(timing.rotated_copies(p)) == 2
