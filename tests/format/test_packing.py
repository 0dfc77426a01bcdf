import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import bits_along_dim0
from vllm_autoround.format import FormatError, pack_cols, pack_rows, unpack_cols, unpack_rows


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), chunks=st.integers(1, 4), cols=st.integers(1, 7), seed=st.integers(0, 99))
def test_rows_round_trip_and_match_an_independent_bit_reader(bits, chunks, cols, seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 2**bits, (32 * chunks, cols), generator=gen, dtype=torch.int32)
    packed = pack_rows(values, bits)
    assert packed.dtype == torch.int32 and packed.shape == (chunks * bits, cols)
    assert torch.equal(unpack_rows(packed, bits), values)
    assert (bits_along_dim0(packed.numpy(), bits, 32 * chunks) == values.numpy()).all()


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_rows_need_only_whole_words_for_power_of_two_bits(bits):
    values = torch.randint(0, 2**bits, (32 // bits, 3), dtype=torch.int32)
    packed = pack_rows(values, bits)
    assert packed.shape == (1, 3)
    assert torch.equal(unpack_rows(packed, bits), values)


def test_three_bit_values_straddle_words_as_gptq_does():
    values = torch.zeros(32, 1, dtype=torch.int32)
    values[10, 0] = 0b111  # bits 30..32: two in word 0, one in word 1
    values[21, 0] = 0b101  # bits 63..65: one in word 1, two in word 2
    packed = pack_rows(values, 3)
    words = [int(w) & 0xFFFFFFFF for w in packed[:, 0]]
    assert words[0] == 0b11 << 30
    assert words[1] == (1 | (1 << 31))
    assert words[2] == 0b10
    assert torch.equal(unpack_rows(packed, 3), values)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_cols_round_trip(bits):
    values = torch.randint(0, 2**bits, (5, 64), dtype=torch.int32)
    packed = pack_cols(values, bits)
    assert packed.shape == (5, 64 * bits // 32)
    assert torch.equal(unpack_cols(packed, bits), values)


def test_bad_input_is_rejected_with_a_reason():
    with pytest.raises(FormatError, match="bits=5"):
        pack_rows(torch.zeros(32, 1, dtype=torch.int32), 5)
    with pytest.raises(FormatError, match="outside"):
        pack_rows(torch.full((32, 1), 16, dtype=torch.int32), 4)
    with pytest.raises(FormatError, match="multiple of 32"):
        pack_rows(torch.zeros(16, 1, dtype=torch.int32), 3)
    with pytest.raises(FormatError, match="int32"):
        unpack_rows(torch.zeros(4, 1, dtype=torch.float32), 4)
