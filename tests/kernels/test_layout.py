"""The one-time repack: lossless against the checkpoint's own unpacker, and the rebuild API."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import ALL_SCHEMES, checkpoint, prepared, scheme_id, small_shape
from vllm_autoround.format import FormatError, pack_cols, unpack_rows
from vllm_autoround.kernels import PreparedWeight, dequantize, dequantize_prepared, prepare_weight
from vllm_autoround.kernels.layout import block_k, padded_k, repack_codes, unpack_codes


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=scheme_id)
def test_repack_round_trip_and_dequantize(scheme):
    bits, gs, sym = scheme
    k, n = small_shape(bits, gs)
    ck = checkpoint(bits, gs, sym, k, n)
    p = prepared(ck)
    assert p.qweight.shape == (padded_k(k, bits) * bits // 32, n)
    assert torch.equal(unpack_codes(p.qweight, bits, k), unpack_rows(ck["qweight"], bits))
    ref = dequantize(ck["qweight"], ck["qzeros"], ck["scales"], bits, gs, ck["zero_point_offset"], torch.float32)
    assert torch.equal(dequantize_prepared(p, torch.float32), ref)
    # sym checkpoints share one zero point; asym ones keep a tensor of them
    assert (p.zero_point == 2 ** (bits - 1)) if sym else (p.zero_point == -1 and p.zeros.dtype == torch.uint8)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_repack_bit_positions(bits):
    """Code k of block b sits in row b*R + r at bit j*bits (3 bits: the A/B/C words) — spot checks."""
    k = 2 * block_k(bits)
    codes = torch.zeros(k, 3, dtype=torch.int32)
    r, j, col = 5, 1, 2
    kk = block_k(bits) + j * 16 + r  # block 1, slice j, row r
    codes[kk, col] = 1
    words = repack_codes(codes, bits)
    rows = 3 * 16 if bits == 3 else 16
    expected_row = rows + r
    assert int(words[expected_row, col]) == 1 << (3 * j if bits == 3 else j * bits)
    assert int(words.count_nonzero()) == 1


def test_high_zero_points_use_int16():
    k, n = 64, 8
    zeros = torch.full((1, n), 255, dtype=torch.int32)
    zeros[0, 0] = 3
    qweight = torch.randint(-2**31, 2**31 - 1, (k * 8 // 32, n), dtype=torch.int32)
    p = prepare_weight(qweight, pack_cols(zeros, 8), torch.ones(1, n, dtype=torch.float16), bits=8,
                       group_size=-1, zero_point_offset=1)
    assert p.zeros.dtype == torch.int16 and int(p.zeros.max()) == 256


def test_prepared_rebuild_from_tensors_and_meta():
    ck = checkpoint(4, 32, False, 256, 40)
    bias = torch.randn(40)
    p = prepared(ck, bias)
    q = PreparedWeight.from_tensors(p.tensors(), p.meta())
    assert set(PreparedWeight.tensor_names()) <= set(p.tensors())
    assert q.meta() == p.meta() and all(torch.equal(a, b) for a, b in zip(q.tensors().values(),
                                                                          p.tensors().values(), strict=True))
    assert torch.equal(PreparedWeight.from_tensors(p.tensors(), **p.meta()).bias, bias)
    with pytest.raises(FormatError, match="missing tensors"):
        PreparedWeight.from_tensors({"qweight": p.qweight}, p.meta())


@pytest.mark.parametrize("change, match", [
    (dict(qweight=torch.zeros(8, 40, dtype=torch.int64)), "qweight must be 2-D int32"),
    (dict(scales=torch.ones(3, 40, dtype=torch.float16)), "scales shape"),
    (dict(qzeros=torch.zeros(8, 4, dtype=torch.int32)), "qzeros"),
    (dict(group_size=96), "does not divide"),
    (dict(bias=torch.zeros(41)), "bias shape"),
])
def test_prepare_weight_rejects_bad_tensors(change, match):
    ck = checkpoint(4, 32, True, 256, 40)
    args = dict(qweight=ck["qweight"], qzeros=ck["qzeros"], scales=ck["scales"], bits=4, group_size=32,
                zero_point_offset=1, bias=None)
    args.update(change)
    with pytest.raises(FormatError, match=match):
        prepare_weight(args.pop("qweight"), args.pop("qzeros"), args.pop("scales"), **args)
