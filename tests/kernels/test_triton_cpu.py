"""Every Triton kernel on every (bits, group size, sym) against a float64 reference, on the CPU.

The kernels run under TRITON_INTERPRET=1 (see conftest). Outputs are NaN-poisoned before each launch
so an element the kernel fails to write shows up; shapes have N tails past the tile and odd M.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.kernels.helpers import ALL_SCHEMES, checkpoint, prepared, rel_err, scheme_id, small_shape
from vllm_autoround.kernels.launch import KernelConfig, dequantize, run

# bf16 output rounding alone is ~2e-3 relative; the kernels add float32 accumulation-order noise.
BOUND = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _block_n(bits: int) -> int:
    return 64 if bits == 3 else 32  # small_shape's N leaves a partial last tile either way


def _check(scheme, cfg: KernelConfig, m: int, dtype=torch.bfloat16, bias: bool = False, seed: int = 0,
           n: int | None = None):
    bits, gs, sym = scheme
    k, n_default = small_shape(bits, gs)
    n = n or n_default
    ck = checkpoint(bits, gs, sym, k, n, seed=seed)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1)).half() if bias else None
    p = prepared(ck, b)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 2)).to(dtype)
    out = torch.full((m, n), float("nan"), dtype=dtype)
    run(x, p, cfg, out=out)
    ref = x.double() @ ck["w64"].t() + (0 if b is None else b.double())
    err = rel_err(out, ref)
    assert err < BOUND[dtype], f"{scheme_id(scheme)} {cfg}: relative error {err:.2e}"
    assert int(p.counters.abs().sum()) == 0, "split-K counters not handed back zeroed"


@pytest.mark.parametrize("prefetch", [False, True], ids=["loads", "prefetch"])
@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=scheme_id)
def test_gemv_every_scheme(interpreter, scheme, prefetch):
    """Both loop forms: loads in the block, or the next block's words and x carried in registers."""
    _check(scheme, KernelConfig("gemv", block_n=_block_n(scheme[0]), waves=4, prefetch=prefetch), m=1)


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=scheme_id)
def test_gemm_every_scheme(interpreter, scheme):
    _check(scheme, KernelConfig("gemm", block_m=16, block_n=_block_n(scheme[0]), waves=2, w_first=True), m=3)


GEMM16_SCHEMES = [s for s in ALL_SCHEMES if s[0] in (2, 3, 4)]


@pytest.mark.parametrize("scheme", GEMM16_SCHEMES, ids=scheme_id)
def test_gemm16_every_scheme(interpreter, scheme):
    """The register-operand kernel on every scheme it decodes (bits 2, 3 and 4, sym and asym: per-group zero
    points are corrected through the activations' group sums), split-K, N tail, odd M."""
    _check(scheme, KernelConfig("gemm16", block_m=16, block_n=32, waves=2), m=3)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cfg", [KernelConfig("gemm16", block_m=16, block_n=32, waves=0),
                                 KernelConfig("gemm16", block_m=32, block_n=64, waves=4, num_stages=2)],
                         ids=["no-split", "split"])
def test_gemm16_tilings_dtypes_bias(interpreter, cfg, dtype):
    """M over BLOCK_M with a ragged last tile, with and without split-K, bias, both activation dtypes; the
    per-channel scheme pads K (its last block is partly past K)."""
    for scheme in [(4, 64, True), (2, -1, True), (3, -1, True), (4, 32, False), (2, -1, False)]:
        _check(scheme, cfg, m=37, dtype=dtype, bias=True, seed=11)


def test_gemm16_whole_tiles(interpreter):
    """N a whole number of tiles: the word loads go unmasked."""
    _check((4, 128, True), KernelConfig("gemm16", block_m=16, block_n=64, waves=2), m=5, n=128, seed=13)


@pytest.mark.parametrize("scheme", [(8, 128, True), (8, -1, False)], ids=scheme_id)
def test_gemm16_refuses_what_it_cannot_decode(scheme):
    bits, gs, sym = scheme
    k, n = small_shape(bits, gs)
    p = prepared(checkpoint(bits, gs, sym, k, n))
    with pytest.raises(ValueError, match="gemm16 decodes bits 2, 3 and 4"):
        run(torch.randn(2, k, dtype=torch.bfloat16), p, KernelConfig("gemm16"))


@pytest.mark.parametrize("dtype, magic, base", [(torch.bfloat16, 0x4300, 128), (torch.float16, 0x6400, 1024)])
def test_gemm16_magic_numbers_put_a_code_in_the_units_place(dtype, magic, base):
    """What the compiled decode relies on (the interpreter takes another route): a 4-bit field OR-ed into the
    mantissa of ``base`` reads as ``base + code`` in the activation dtype."""
    codes = torch.arange(16, dtype=torch.int16)
    assert torch.equal((codes | magic).view(dtype).float(), codes.float() + base)


def _run_ptx(asm: str, word: int) -> int:
    """What one of gemm16's decode snippets leaves in ``$0`` for the 32-bit input ``$1``: it uses only
    ``shr.b32`` and ``lop3.b32`` (the truth table applied bit by bit, as PTX defines it)."""
    regs = {"$1": word}
    for ins in asm.strip("{} ").split(";"):
        ins = ins.strip()
        if not ins or ins.startswith(".reg"):
            continue
        op, args = ins.split(" ", 1)
        dst, *srcs = [a.strip() for a in args.split(",")]
        vals = [regs[a] if a.startswith(("$", "t")) else int(a, 0) for a in srcs]
        if op == "shr.b32":
            regs[dst] = vals[0] >> vals[1]
        elif op == "lop3.b32":
            a, b, c, lut = vals
            regs[dst] = sum(((lut >> ((a >> i & 1) << 2 | (b >> i & 1) << 1 | (c >> i & 1))) & 1) << i
                            for i in range(32))
        else:
            raise AssertionError(f"unexpected instruction {op!r} in {asm!r}")
    return regs["$0"]


@pytest.mark.parametrize("dtype, base", [(torch.bfloat16, 128), (torch.float16, 1024)], ids=["bf16", "fp16"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gemm16_decode_ptx_gives_base_plus_code_in_both_lanes(dtype, base, bits):
    """The compiled decode (inline PTX, which the interpreter cannot run): for every field position of two
    random 16-bit lanes, one shift and one LOP3 leave ``base + field`` in each lane of the activation dtype."""
    from vllm_autoround.kernels import triton_kernels as tk

    rng = np.random.default_rng(bits)
    lanes = rng.integers(0, 1 << 16, size=(64, 2))
    mask = (1 << bits) - 1
    for sh in range(16 - bits + 1):
        asm = tk._MAGIC16[(256 if dtype == torch.float16 else 0) + 16 * sh + mask]
        out = [_run_ptx(asm, int(lo | hi << 16)) for lo, hi in lanes]
        got = torch.tensor(out, dtype=torch.int64).to(torch.int32).view(dtype).view(-1, 2).float()
        want = torch.tensor((lanes >> sh) & mask, dtype=torch.float32) + base
        assert torch.equal(got, want), f"shift {sh}"


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=scheme_id)
def test_dequantize_every_scheme(interpreter, scheme):
    bits, gs, sym = scheme
    k, n = small_shape(bits, gs)
    ck = checkpoint(bits, gs, sym, k, n)
    w = dequantize(prepared(ck), torch.float16, KernelConfig("dequant", block_n=_block_n(bits)))
    assert w.shape == (k, n)
    assert rel_err(w, ck["w64"].t()) < 1e-3


VARIANTS = [
    KernelConfig("gemv", block_n=32, waves=0),
    KernelConfig("gemv", block_n=64, waves=8, prefetch=True),
    KernelConfig("gemv", block_n=128, warp_n=32, waves=4),
    KernelConfig("gemv", block_n=64, warp_n=64, waves=2, num_warps=2),
    KernelConfig("gemm", block_m=16, block_n=32, waves=0, scale_after=False),
    KernelConfig("gemm", block_m=16, block_n=64, waves=4, prefetch=True),
    KernelConfig("gemm", block_m=32, block_n=32, waves=2, w_first=True, prefetch=True, scale_after=False),
]


@pytest.mark.slow
@pytest.mark.parametrize("scheme", [(3, 64, True), (4, 32, False), (2, -1, False), (8, 128, True)], ids=scheme_id)
@pytest.mark.parametrize("cfg", VARIANTS, ids=lambda c: f"{c.kind}-bn{c.block_n}-wn{c.warp_n}-w{c.waves}"
                         f"-pf{int(c.prefetch)}-sa{int(c.scale_after)}-wf{int(c.w_first)}")
def test_tiling_variants(interpreter, scheme, cfg):
    """Split-K or not, prefetch, scale before/after the dot, weight-first MMA; odd M over BLOCK_M."""
    _check(scheme, cfg, m=1 if cfg.kind == "gemv" else 17, bias=True, seed=3)


@pytest.mark.parametrize("prefetch", [False, True], ids=["loads", "prefetch"])
@pytest.mark.parametrize("rows_outer", [False, True])
@pytest.mark.parametrize("scheme", [(4, 128, True), (2, 64, False), (3, 32, True), (8, -1, False)], ids=scheme_id)
def test_gemv_whole_tiles_both_axis_orders(interpreter, monkeypatch, scheme, rows_outer, prefetch):
    """N a whole number of tiles (unmasked loads), two column repeats per tile, in both 3-D tile axis
    orders (which one compiles depends on the Triton version; see triton_kernels.ROWS_OUTER)."""
    from vllm_autoround.kernels import triton_kernels

    monkeypatch.setattr(triton_kernels, "ROWS_OUTER", rows_outer)
    _check(scheme, KernelConfig("gemv", block_n=64, warp_n=32, waves=2, prefetch=prefetch), m=2, n=128, seed=5)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [KernelConfig("gemv", block_n=32, waves=4), KernelConfig("gemm", block_n=32, waves=2),
                                 KernelConfig("dequant", block_n=32)], ids=lambda c: c.kind)
def test_float16_with_bias(interpreter, cfg):
    _check((4, 64, False), cfg, m=2 if cfg.kind == "gemv" else 5, dtype=torch.float16, bias=True, seed=7)


@pytest.mark.parametrize("scheme", [(4, 128, True), (3, 64, True)], ids=scheme_id)
def test_wgmma_choice_falls_back_to_dequantize_where_gluon_cannot_run(interpreter, scheme):
    """A tuned or default "wgmma" choice stays valid off Hopper (here: the interpreter; on a GPU also other
    architectures and 3-/8-bit layers): the launcher runs dequantize + cuBLAS instead, with the same result."""
    from vllm_autoround.kernels.tuning import wgmma_config

    _check(scheme, wgmma_config(128, 128, 2), m=5, bias=True, seed=11)


@pytest.mark.parametrize("scheme", [(2, 64, True), (4, 32, False), (3, 64, True)], ids=scheme_id)
def test_tma_gemv_choice_falls_back_to_the_triton_gemv_where_gluon_cannot_run(interpreter, scheme):
    """The M=1 default for 2 bits is the TMA-fed Gluon gemv (Hopper only): off Hopper (here: the interpreter;
    on a GPU also other architectures, 3-bit layers, unaligned shapes) the launcher runs the Triton gemv."""
    from vllm_autoround.kernels.tuning import tma_gemv_config

    _check(scheme, tma_gemv_config(64, 4), m=1, bias=True, seed=21)
    _check(scheme, tma_gemv_config(64, 4), m=3, seed=22)


def test_tma_gemv_declines_what_its_tma_loads_cannot_address(monkeypatch):
    """What ``tma_gemv.supported`` turns down, each for a reason TMA or the flat x view imposes; checked
    without a GPU through the shape rules alone (the device check comes last)."""
    from vllm_autoround.kernels import tma_gemv

    if not tma_gemv.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon")
    x = torch.zeros(1, 4096, dtype=torch.bfloat16)
    assert not tma_gemv.supported(x, 4, 128, 4096, 4096)  # a CPU tensor
    assert not tma_gemv.supported(x, 3, 64, 4096, 4096)
    # the shape rules, on a stand-in that reports itself as a CUDA tensor
    cuda_x = torch.zeros(1, 4096 + 16, dtype=torch.bfloat16)[:, :4096]

    class OnCuda:
        device = torch.device("cuda", 0)
        dtype = cuda_x.dtype

        def __getattr__(self, name):
            return getattr(cuda_x, name)

    monkeypatch.setattr(tma_gemv, "is_hopper", lambda index: True)
    assert tma_gemv.supported(OnCuda(), 4, 128, 4096, 4096)
    assert not tma_gemv.supported(OnCuda(), 4, 128, 4000, 4096)  # K not whole 128-value blocks
    assert not tma_gemv.supported(OnCuda(), 4, 128, 4096, 4100)  # N rows not 16-byte aligned
    zeros8 = torch.zeros(32, 4096, dtype=torch.uint8)
    assert tma_gemv.supported(OnCuda(), 4, 128, 4096, 4096, zeros8, block_n=128)
    assert not tma_gemv.supported(OnCuda(), 4, 128, 4096, 4096, zeros8, block_n=64)  # 64-byte zero rows
    assert tma_gemv.supported(OnCuda(), 4, 32, 4096, 4096, zeros8, block_n=64)  # 4 groups per block: 256 B


def test_wgmma_failure_is_reported_once_and_falls_back(interpreter, monkeypatch, caplog):
    """Gluon's API moves between Triton releases: a Gluon tiling that raises on this Triton/GPU must not fail
    the layer. The launcher logs one warning naming the tiling and the error, and from then on runs
    dequantize + cuBLAS for that tiling (the result still matches the float64 reference)."""
    from vllm_autoround.kernels import launch, wgmma_gemm
    from vllm_autoround.kernels.tuning import wgmma_config

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise AttributeError("module 'tma' has no attribute 'async_load'")

    monkeypatch.setattr(launch.tk, "INTERPRETED", False)  # reach the Gluon branch; Triton still interprets
    monkeypatch.setattr(wgmma_gemm, "supported", lambda *args: True)
    monkeypatch.setattr(wgmma_gemm, "wgmma_gemm", broken)
    monkeypatch.setattr(launch, "_FAILED_GLUON", set())
    cfg = wgmma_config(128, 128, 1, max_registers=96)
    with caplog.at_level("WARNING", logger="vllm_autoround.kernels.launch"):
        _check((4, 64, True), cfg, m=7, bias=True, seed=13)
        _check((4, 64, True), cfg, m=9, seed=14)
    assert len(calls) == 1
    warnings = [r.getMessage() for r in caplog.records if "Gluon kernel" in r.getMessage()]
    assert len(warnings) == 1 and "async_load" in warnings[0] and "max_registers=96" in warnings[0], warnings


@pytest.mark.parametrize("split", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_split_k_partials_are_summed_in_one_pass(interpreter, split, dtype):
    """The Gluon kernel's split-K partials above M=64 (one kernel where torch took two or three): against a float64
    sum, into a poisoned, strided output with M and N tails past the 32 x 128 tiles, with and without a bias."""
    from vllm_autoround.kernels.wgmma_gemm import add_partials

    g = torch.Generator().manual_seed(split)
    m, n = 37, 200
    part = torch.randn(split, m, n, generator=g)
    for bias in (None, torch.randn(n, generator=g).half()):
        wide = torch.full((m, n + 24), float("nan"), dtype=dtype)
        out = wide[:, :n]
        add_partials(part, bias, out)
        ref = part.double().sum(0) + (0 if bias is None else bias.double())
        assert rel_err(out, ref) < BOUND[dtype]
        assert torch.isnan(wide[:, n:].float()).all(), "wrote past the output's columns"


def test_split_k_partials_need_unit_column_stride(interpreter):
    from vllm_autoround.kernels.wgmma_gemm import add_partials

    with pytest.raises(ValueError, match="unit column stride"):
        add_partials(torch.zeros(2, 4, 8), None, torch.zeros(8, 4, dtype=torch.bfloat16).t())
