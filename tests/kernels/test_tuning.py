"""Configuration choice: M buckets, candidate lists, defaults off-GPU, the JSON cache."""

from __future__ import annotations

import json

import pytest
import torch

from tests.kernels.helpers import checkpoint, prepared
from vllm_autoround.kernels import tuning
from vllm_autoround.kernels.launch import KernelConfig
from vllm_autoround.kernels.tuning import M_BUCKETS, Tuner, candidates, default_config, m_bucket, pick


@pytest.mark.parametrize("m, bucket", [(1, 1), (2, 2), (3, 4), (16, 16), (17, 32), (300, 512), (9000, 4096)])
def test_m_bucket(m, bucket):
    assert m_bucket(m) == bucket


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("mb", M_BUCKETS)
def test_candidates_start_with_the_default_and_are_unique(mb, bits):
    cands = candidates(mb, 4096, 4096, bits)
    assert cands[0] == default_config(mb, 4096, 4096, bits)
    assert len(cands) == len(set(cands))
    for c in cands:
        assert c.kind in ("gemv", "gemm", "gemm16", "wgmma", "tma_gemv", "dequant")
        if c.kind == "wgmma":
            # Gluon decodes 2 and 4 bits; its x ring must fit shared memory (W2: 256 values per K block)
            assert bits in (2, 4) and mb >= 64 and c.num_stages * c.block_m * (512 // bits) * 2 <= 227 * 1024
        if c.kind == "tma_gemv":
            # one x row per program, 2/4/8-bit words
            assert bits in (2, 4, 8) and mb <= 4
        if c.kind == "gemm":
            # a wgmma with x on the A side needs 64 rows, measured faster than 16-row tiles at M = 17-32
            assert c.block_m <= max(64, mb)


@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("mb", M_BUCKETS)
def test_register_operand_kernel_only_where_it_decodes(mb, bits, sym):
    """gemm16 decodes bits 2, 3 and 4, sym or asym (8-bit layers keep gemm_kernel), up to M=128, 3 bits up to
    M=64 (slower than dequantize + cuBLAS at 128). Sym, it is the default there; asym only for 4 bits with at
    most one group per K block: each further group costs a zero-point correction (measured slower for W2/W3
    g64)."""
    reaches = 128 if bits in (2, 4) else 64
    for gs in (32, 64, 128, -1):
        kinds = {c.kind for c in candidates(mb, 4096, 4096, bits, sym, gs)}
        assert ("gemm16" in kinds) == (bits in (2, 3, 4) and 1 < mb <= reaches)
        if 1 < mb <= 128:
            default_is_gemm16 = bits in (2, 3, 4) and mb <= reaches and (sym or (bits == 4 and gs in (128, -1)))
            assert (default_config(mb, 4096, 4096, bits, sym, gs).kind == "gemm16") == default_is_gemm16


@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("mb", M_BUCKETS)
def test_gluon_kernel_is_the_default_only_for_large_w4_layers_at_m128_and_256(mb, bits, sym):
    """Measured faster than dequantize + cuBLAS at M=256 on three layer shapes, slower on 4096 x 6144 (too few
    tiles); at M=128, capped at 128 registers, ahead of gemm16 or even with it on the same three (sym g128;
    asym and other groups not measured against gemm16 there); never measured ahead at other M or bit widths:
    there it is only a tuner candidate."""
    for gs in (128, 32):
        for n, k in ((14336, 4096), (4096, 14336), (28672, 8192), (6144, 4096), (4096, 4096)):
            cfg = default_config(mb, n, k, bits, sym, gs)
            big_w4 = bits == 4 and n * k >= 4096 * 14336
            assert (cfg.kind == "wgmma") == (big_w4 and (mb == 256 or (mb == 128 and sym and gs == 128)))
            if cfg.kind == "wgmma":
                assert cfg.max_registers == (128 if mb == 128 else 0)


@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_tma_gemv_is_the_m1_default_only_for_two_bits(bits, sym):
    """The TMA-fed gemv beat the Triton gemv on every W2 shape measured and lost on W4 g128: it is the M=1
    default for 2 bits only, and a tuner candidate up to M=4 for every width it decodes."""
    for gs in (32, 64, 128, -1):
        assert (default_config(1, 4096, 4096, bits, sym, gs).kind == "tma_gemv") == (bits == 2)
        for mb in (1, 2, 4):
            kinds = {c.kind for c in candidates(mb, 4096, 4096, bits, sym, gs)}
            assert ("tma_gemv" in kinds) == (bits != 3)
            assert "gemv" in kinds  # the fallback off Hopper stays timed too


@pytest.mark.parametrize("mb", M_BUCKETS)
def test_three_bit_defaults_avoid_the_tile_that_overflows_shared_memory(mb):
    """A 64 x 128 tile's three 3-bit word tiles need 244 KiB of shared memory on the H100 (limit 227 KiB); a
    gemm16 stage holds x's 16-bit block (rows x 512 values) and three words per 32 codes of each column."""
    cfg = default_config(mb, 4096, 4096, 3)
    assert not (cfg.kind == "gemm" and cfg.block_m * cfg.block_n >= 64 * 128)
    if cfg.kind == "gemm16":
        stage_bytes = cfg.block_m * 512 * 2 + 512 // 32 * 3 * cfg.block_n * 4
        assert cfg.num_stages * stage_bytes <= 227 * 1024


def test_off_gpu_choice_is_the_default_and_cache_round_trips(tmp_path, monkeypatch):
    p = prepared(checkpoint(4, 128, True, 256, 40))
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    path = tmp_path / "tune.json"
    monkeypatch.setenv("VLLM_AUTOROUND_TUNE_CACHE", str(path))
    tuner = Tuner()
    assert tuner.choose(x, p) == default_config(4, 40, 256, 4)
    chosen = KernelConfig("gemv", block_n=64, waves=2.0, prefetch=True)
    tuner._cache[tuner.key(x, p)] = chosen
    tuner._save()
    assert json.loads(path.read_text())[tuner.key(x, p)]["block_n"] == 64
    assert Tuner().choose(x, p) == chosen


def test_choices_persist_by_default_in_a_file_per_code_version(tmp_path, monkeypatch):
    """Without VLLM_AUTOROUND_TUNE_CACHE the choices go to the user's cache directory, in a file named after a
    hash of the kernel and tuner sources (a choice timed for other code is never reused); empty: memory only."""
    monkeypatch.delenv("VLLM_AUTOROUND_TUNE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tuning.default_cache_path()
    assert path.parent == tmp_path / "vllm_autoround" and path.name.startswith("tune-") and path.suffix == ".json"
    tuner = Tuner()
    x, p = torch.zeros(16, 256, dtype=torch.bfloat16), prepared(checkpoint(4, 128, True, 256, 40))
    chosen = KernelConfig("gemm16", block_m=16, block_n=64, waves=4)
    tuner._cache[tuner.key(x, p)] = chosen
    tuner._save()
    assert Tuner().choose(x, p) == chosen  # a new process finds it
    monkeypatch.setenv("VLLM_AUTOROUND_TUNE", "0")  # tuning off: the measured default, not the saved choice
    assert Tuner().choose(x, p) == default_config(16, 40, 256, 4)
    monkeypatch.delenv("VLLM_AUTOROUND_TUNE")
    monkeypatch.setattr(tuning, "_FINGERPRINTED", tuning._FINGERPRINTED[:-1])  # as if the code had changed
    assert tuning.default_cache_path() != path
    monkeypatch.setenv("VLLM_AUTOROUND_TUNE_CACHE", "")
    memory_only = Tuner()
    memory_only._cache[memory_only.key(x, p)] = chosen
    memory_only._save()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_bad_cache_file_is_ignored_with_a_warning(tmp_path, monkeypatch, caplog):
    path = tmp_path / "tune.json"
    monkeypatch.setenv("VLLM_AUTOROUND_TUNE_CACHE", str(path))
    for text in ("{not json", '{"key": {"no_such_field": 1}}', "[1, 2]"):
        path.write_text(text)
        caplog.clear()
        tuner = Tuner()
        assert tuner._cache == {}
        assert str(path) in caplog.text and "re-timed" in caplog.text


def test_an_unwritable_cache_is_given_up_with_a_warning(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("VLLM_AUTOROUND_TUNE_CACHE", str(blocker / "sub" / "tune.json"))
    tuner = Tuner()
    tuner._cache["k"] = KernelConfig("dequant")
    tuner._save()  # must not raise: the choice stays in memory
    assert "cannot write the kernel tuning cache" in caplog.text and tuner._path is None
    assert tuner._cache["k"] == KernelConfig("dequant")


def test_a_candidate_replaces_the_default_only_when_clearly_faster():
    default, *others = candidates(16, 4096, 14336, 4)
    a, b = others[:2]
    assert pick({default: 28.4, a: 27.0, b: 31.4}, default) == default  # 5% faster is within the timing noise
    assert pick({default: 28.4, a: 25.0, b: 26.0}, default) == a  # 12% faster replaces it
    assert pick({a: 30.0, b: 29.0}, default) == b  # the default did not compile here
    assert pick({}, default) == default


def test_a_candidate_whose_output_differs_from_the_default_is_never_chosen(monkeypatch, caplog):
    """The tuner checks each candidate's output on the live inputs against the default's before timing it,
    so a kernel that is fast but wrong on this device (decode, layout, split-K reduction) cannot be picked."""
    default, good, wrong, nan, broken = candidates(16, 4096, 14336, 4)[:5]
    ref = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    outputs = {default: ref, good: ref * (1 + 1e-3), wrong: ref.flip(1), nan: ref.clone().fill_(float("nan"))}
    speed = {default: 30.0, good: 20.0, wrong: 10.0, nan: 5.0, broken: 1.0}

    def fake_run(x, p, cfg, out=None):
        if cfg == broken:
            raise RuntimeError("out of resource: shared memory")
        return outputs[cfg]

    def fake_time(fns, **kwargs):
        fns[0]()
        return speed[timed[-1]]

    timed = []
    monkeypatch.setattr(tuning, "run", lambda x, p, cfg, out=None: (timed.append(cfg), fake_run(x, p, cfg))[1])
    monkeypatch.setattr(tuning, "graph_time_us", fake_time)
    monkeypatch.setattr(tuning, "rotated_copies", lambda p: [p])
    monkeypatch.setattr(tuning.Tuner, "key", staticmethod(lambda x, p: "key"))
    with caplog.at_level("WARNING", logger="vllm_autoround.kernels.tuning"):
        chosen = tuning.Tuner._tune(torch.zeros(16, 8), object(), [default, good, wrong, nan, broken])
    assert chosen == good
    assert sum("differs from the default" in r.message for r in caplog.records) == 2
    assert tuning.relative_difference(ref * 1.01, ref) == pytest.approx(0.01, rel=1e-4)


def test_the_tuner_does_not_time_gluon_candidates_that_would_run_their_fallback():
    """Off Hopper (here: the interpreter) a Gluon candidate runs its fallback, which is a candidate already:
    the tuner leaves it out instead of timing the same kernel again. The default stays first either way."""
    from vllm_autoround.kernels import launch

    p = prepared(checkpoint(2, 64, True, 256, 64))
    x = torch.randn(1, 256, dtype=torch.bfloat16)
    assert not launch.runs_natively(x, p, tuning.tma_gemv_config(64, 4))
    assert not launch.runs_natively(x, p, tuning.wgmma_config(128, 128, 1))
    assert launch.runs_natively(x, p, launch.GEMV_DEFAULT)
    cands = tuning.native_candidates(x, p)
    assert cands[0] == default_config(1, 64, 256, 2, True, 64) and cands[0].kind == "tma_gemv"
    assert all(c.kind not in ("tma_gemv", "wgmma") for c in cands[1:]) and launch.GEMV_DEFAULT in cands
    assert len(cands) < len(candidates(1, 64, 256, 2, True, 64))
