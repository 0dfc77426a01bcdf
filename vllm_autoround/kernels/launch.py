"""Python launchers: one call per kernel with an explicit :class:`KernelConfig`."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import NamedTuple

import torch

from vllm_autoround.kernels import tma_gemv as tg
from vllm_autoround.kernels import triton_kernels as tk
from vllm_autoround.kernels import wgmma_gemm as wg
from vllm_autoround.kernels.layout import PreparedWeight, block_k

TRITON_DTYPES = (torch.float16, torch.bfloat16)
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelConfig:
    """Which kernel and how it is tiled. ``waves``: split K until about waves x SMs programs run."""

    kind: str  # "gemv" | "gemm" | "gemm16" | "wgmma" | "tma_gemv" | "dequant"
    block_n: int = 128
    warp_n: int = 32  # gemv: columns across one warp's lanes (32: one row per thread with 4 warps)
    block_m: int = 16
    waves: float = 0.0
    num_warps: int = 4
    num_stages: int = 2  # tma_gemv: TMA ring stages
    scale_after: bool = True
    w_first: bool = False
    prefetch: bool = False
    max_registers: int = 0  # wgmma: ptxas's register cap per thread (0: its own choice)

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=8)
def sm_count(device_index: int) -> int:
    if not torch.cuda.is_available():
        return 4
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_sms(device: torch.device) -> int:
    return sm_count(device.index or 0) if device.type == "cuda" else 4


def _group_constexpr(p: PreparedWeight) -> int:
    """GS for the kernels: 0 when one group spans K (per channel), else the group size."""
    return 0 if p.effective_group_size == p.in_features else p.effective_group_size


def split_plan(num_blocks: int, tiles: int, waves: float, p: PreparedWeight, device: torch.device) -> tuple[int, int]:
    """(split_k, blocks_per_split) so that tiles * split_k ~ waves * SMs, no split left empty."""
    if waves <= 0 or tiles > p.counters.numel():
        return 1, num_blocks
    split = max(1, min(num_blocks, round(waves * _num_sms(device) / tiles)))
    per = -(-num_blocks // split)
    return -(-num_blocks // per), per


def _even_k(p: PreparedWeight) -> bool:
    return p.padded_in_features == p.in_features


def _bias_arg(p: PreparedWeight, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (p.bias, True) if p.bias is not None else (x, False)


def _zeros_arg(p: PreparedWeight) -> torch.Tensor:
    return p.zeros if p.zero_point < 0 else p.scales


def gemv(x: torch.Tensor, p: PreparedWeight, cfg: KernelConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x[M, K] @ W.T`` with :func:`triton_kernels.gemv_kernel` (one program row per activation row)."""
    m, k = x.shape
    n = p.out_features
    out = torch.empty(m, n, dtype=x.dtype, device=x.device) if out is None else out
    if m == 0:
        return out
    num_blocks = p.padded_in_features // block_k(p.bits, p.interleave)
    n_tiles = -(-n // cfg.block_n)
    split, per = split_plan(num_blocks, n_tiles * m, cfg.waves, p, x.device)
    part = torch.empty(split, m, n, dtype=torch.float32, device=x.device) if split > 1 else out
    bias, has_bias = _bias_arg(p, x)
    tk.gemv_kernel[(n_tiles, split, m)](
        x, p.qweight, p.scales, _zeros_arg(p), bias, out, part, p.counters,
        m, n, k, x.stride(0), out.stride(0), num_blocks, per, split, 0,
        BITS=p.bits, R=p.interleave, GS=_group_constexpr(p), ZERO=p.zero_point, HAS_BIAS=has_bias,
        BLOCK_N=cfg.block_n, SPLIT=split > 1, EVEN_K=_even_k(p), PREFETCH=cfg.prefetch,
        WARP_N=min(cfg.warp_n, cfg.block_n), EVEN_N=n % cfg.block_n == 0, ROWS_OUTER=tk.ROWS_OUTER,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


class _Tiles(NamedTuple):
    out: torch.Tensor
    grid: tuple[int, int, int]
    num_blocks: int
    split: int
    per_split: int
    part: torch.Tensor  # float32 split-K partials, or ``out`` when there is one split
    bias: torch.Tensor
    has_bias: bool


def _tiles(x: torch.Tensor, p: PreparedWeight, cfg: KernelConfig, out: torch.Tensor | None) -> _Tiles:
    """Output, grid (M tiles, N tiles, K splits) and split-K buffers of a tensor-core launch."""
    m, n = x.shape[0], p.out_features
    out = torch.empty(m, n, dtype=x.dtype, device=x.device) if out is None else out
    num_blocks = p.padded_in_features // block_k(p.bits, p.interleave)
    m_tiles, n_tiles = -(-m // cfg.block_m), -(-n // cfg.block_n)
    split, per = split_plan(num_blocks, m_tiles * n_tiles, cfg.waves, p, x.device)
    part = torch.empty(split, m, n, dtype=torch.float32, device=x.device) if split > 1 else out
    bias, has_bias = _bias_arg(p, x)
    return _Tiles(out, (m_tiles, n_tiles, split), num_blocks, split, per, part, bias, has_bias)


def gemm(x: torch.Tensor, p: PreparedWeight, cfg: KernelConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x[M, K] @ W.T`` with :func:`triton_kernels.gemm_kernel` (tensor-core tiles)."""
    t = _tiles(x, p, cfg, out)
    if t.out.shape[0] == 0:
        return t.out
    m, k = x.shape
    tk.gemm_kernel[t.grid](
        x, p.qweight, p.scales, _zeros_arg(p), t.bias, t.out, t.part, p.counters,
        m, p.out_features, k, x.stride(0), t.out.stride(0), t.num_blocks, t.per_split, t.split, 0,
        BITS=p.bits, R=p.interleave, GS=_group_constexpr(p), ZERO=p.zero_point, HAS_BIAS=t.has_bias,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, SPLIT=t.split > 1, SCALE_AFTER=cfg.scale_after,
        W_FIRST=cfg.w_first, F32_DOT=tk.INTERPRETED, EVEN_K=_even_k(p),
        PREFETCH=cfg.prefetch, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return t.out


def gemm16_supported(p: PreparedWeight) -> bool:
    """:func:`triton_kernels.gemm16_kernel` decodes 2-, 3- and 4-bit codes, sym or asym."""
    return p.bits in (2, 3, 4)


def gemm16(x: torch.Tensor, p: PreparedWeight, cfg: KernelConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x[M, K] @ W.T`` with :func:`triton_kernels.gemm16_kernel` (weight operand in registers)."""
    if not gemm16_supported(p):
        raise ValueError(f"gemm16 decodes bits 2, 3 and 4, not W{p.bits}")
    t = _tiles(x, p, cfg, out)
    if t.out.shape[0] == 0:
        return t.out
    m, k = x.shape
    n = p.out_features
    tk.gemm16_kernel[t.grid](
        x, p.qweight, p.scales, _zeros_arg(p), t.bias, t.out, t.part, p.counters,
        m, n, k, x.stride(0), t.out.stride(0), t.num_blocks, t.per_split, t.split,
        BITS=p.bits, R=p.interleave, GS=_group_constexpr(p), ZERO=p.zero_point, HAS_BIAS=t.has_bias,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, SPLIT=t.split > 1, EVEN_K=_even_k(p),
        EVEN_N=n % cfg.block_n == 0, INTERPRETED=tk.INTERPRETED, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return t.out


def dequantize(p: PreparedWeight, dtype: torch.dtype, cfg: KernelConfig | None = None) -> torch.Tensor:
    """The weight as ``[K, N]`` in ``dtype`` (transposed nn.Linear layout, ready for ``x @ w``)."""
    cfg = cfg or KernelConfig(kind="dequant")
    k, n = p.in_features, p.out_features
    out = torch.empty(k, n, dtype=dtype, device=p.device)
    num_blocks = p.padded_in_features // block_k(p.bits, p.interleave)
    tk.dequant_kernel[(num_blocks, -(-n // cfg.block_n))](
        p.qweight, p.scales, _zeros_arg(p), out, n, k, 0,
        BITS=p.bits, R=p.interleave, GS=_group_constexpr(p), ZERO=p.zero_point, BLOCK_N=cfg.block_n,
        EVEN_K=_even_k(p), num_warps=cfg.num_warps,
    )
    return out


def dequant_matmul(x: torch.Tensor, p: PreparedWeight, cfg: KernelConfig, out: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Large-M path: dequantize once, then cuBLAS."""
    w = dequantize(p, x.dtype, cfg)
    if p.bias is not None:
        return torch.addmm(p.bias.to(x.dtype), x, w, out=out)
    return torch.matmul(x, w, out=out)


_FAILED_GLUON: set[KernelConfig] = set()
# up to this M the Gluon kernel adds its split-K partials itself (one program per tile reads them all); above
# it, torch's parallel sum is faster than that serial tail
SMALL_M_REDUCE = 64


def runs_natively(x: torch.Tensor, p: PreparedWeight, cfg: KernelConfig) -> bool:
    """Whether ``cfg`` runs its own kernel on this input rather than its fallback (the Gluon kernels need a
    Hopper GPU, a Triton with Gluon, and shapes their TMA loads can address). The tuner times only those: a
    fallback is timed as a candidate of its own."""
    if cfg.kind == "wgmma":
        return not tk.INTERPRETED and wg.supported(x, p.bits, _group_constexpr(p))
    if cfg.kind == "tma_gemv":
        return not tk.INTERPRETED and tg.supported(x, p.bits, _group_constexpr(p), p.in_features, p.out_features,
                                                   p.zeros, cfg.block_n)
    return True


def _gluon_or_fallback(cfg: KernelConfig, p: PreparedWeight, launch, fallback):
    """Run a Gluon kernel's launch; if it raises, report it once and run ``fallback`` for that tiling from then on.

    Gluon's API changes between Triton releases: a tiling that fails to compile or launch here must not
    fail the model.
    """
    try:
        return launch()
    except Exception as exc:  # noqa: BLE001 - reported once; the layer keeps working on the fallback
        _FAILED_GLUON.add(cfg)
        _log.warning("vllm_autoround: the Gluon kernel %s failed on W%d %dx%d (%s: %s); that tiling runs "
                     "the fallback from now on", cfg, p.bits, p.in_features, p.out_features, type(exc).__name__,
                     str(exc)[:300])
        return fallback()


def wgmma(x: torch.Tensor, p: PreparedWeight, cfg: KernelConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """Large-M Gluon kernel on Hopper (:mod:`.wgmma_gemm`); dequantize + cuBLAS where it cannot run (another
    GPU, a Triton without Gluon, the interpreter, 3- or 8-bit, a failed compile), so a tuned choice stays valid
    everywhere."""
    def fallback():
        return dequant_matmul(x, p, KernelConfig(kind="dequant"), out)

    if cfg in _FAILED_GLUON or not runs_natively(x, p, cfg):
        return fallback()
    m, n = x.shape[0], p.out_features
    out = torch.empty(m, n, device=x.device, dtype=x.dtype) if out is None else out
    tiles = -(-m // cfg.block_m) * -(-n // cfg.block_n)
    split = max(1, min(8, round(cfg.waves * _num_sms(x.device) / tiles))) if cfg.waves > 0 else 1
    return _gluon_or_fallback(cfg, p, lambda: wg.wgmma_gemm(
        x, p.qweight, p.scales, p.zeros, p.bias, out, bits=p.bits, group_size=_group_constexpr(p),
        zero_point=p.zero_point, in_features=p.in_features, block_m=cfg.block_m, block_n=cfg.block_n,
        stages=cfg.num_stages, num_warps=cfg.num_warps, split_k=split, max_registers=cfg.max_registers,
        counters=p.counters if m <= SMALL_M_REDUCE else None), fallback)


# the Triton gemv's M=1 default: within 7% of the best tiling on every W2/W4/W8 shape of the H100 sweep
# (ci/gpu/probe_gemv.py, docs/kernels.md); 3-bit runs it without the prefetch (tuning.default_config)
GEMV_DEFAULT = KernelConfig("gemv", block_n=128, waves=4, num_warps=4, num_stages=2, prefetch=True)


def tma_gemv(x: torch.Tensor, p: PreparedWeight, cfg: KernelConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode-path Gluon gemv with a TMA ring on Hopper (:mod:`.tma_gemv`); where it cannot run (another GPU, no
    Gluon, the interpreter, 3-bit, K not whole blocks, unaligned N or x, a failed compile), the Triton gemv's
    default."""
    def fallback():
        return gemv(x, p, GEMV_DEFAULT, out)

    if cfg in _FAILED_GLUON or x.shape[0] == 0 or not runs_natively(x, p, cfg):
        return fallback()
    m, n = x.shape[0], p.out_features
    out = torch.empty(m, n, device=x.device, dtype=x.dtype) if out is None else out
    num_blocks = p.in_features // block_k(p.bits, p.interleave)
    split, _ = split_plan(num_blocks, -(-n // cfg.block_n) * m, cfg.waves, p, x.device)
    return _gluon_or_fallback(cfg, p, lambda: tg.tma_gemv(
        x, p.qweight, p.scales, p.zeros, p.bias, out, p.counters, bits=p.bits, group_size=_group_constexpr(p),
        zero_point=p.zero_point, in_features=p.in_features, block_n=cfg.block_n, stages=cfg.num_stages,
        num_warps=cfg.num_warps, split_k=split), fallback)


LAUNCHERS = {"gemv": gemv, "gemm": gemm, "gemm16": gemm16, "wgmma": wgmma, "tma_gemv": tma_gemv,
             "dequant": dequant_matmul}


def run(x: torch.Tensor, p: PreparedWeight, cfg: KernelConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    return LAUNCHERS[cfg.kind](x, p, cfg, out)
