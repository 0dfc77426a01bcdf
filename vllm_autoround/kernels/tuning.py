"""Which kernel and tiling to run for a given M: measured defaults plus an on-device autotuner.

The key is (device, bits, group size, zero kind, dtype, M bucket, N, K). On the first call for a key
(outside CUDA-graph capture) the candidates of its M bucket are timed on the live inputs (back to back in
a CUDA graph over copies of the weight larger than L2: :mod:`vllm_autoround.kernels.timing`), and one
replaces the measured default only if it is clearly faster (:data:`REPLACE_DEFAULT_BELOW`);
`VLLM_AUTOROUND_TUNE=0` turns timing off (defaults only). The choices are kept across processes in
:func:`default_cache_path` (a file per version of the kernels, Triton and torch), or in
`VLLM_AUTOROUND_TUNE_CACHE=/path.json`; `VLLM_AUTOROUND_TUNE_CACHE=` (empty) keeps them in memory only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import replace
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch

from vllm_autoround.format.files import write_text_atomic
from vllm_autoround.kernels.launch import GEMV_DEFAULT, KernelConfig, run, runs_natively
from vllm_autoround.kernels.layout import PreparedWeight, block_k
from vllm_autoround.kernels.timing import graph_time_us, rotated_copies

_log = logging.getLogger(__name__)

M_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# The defaults come from sweeps with CUDA-graph timing over weight copies larger than L2, and the tuner
# times the same way (kernels/timing.py; until 2026-12-04 it ran a short do_bench on one copy, which twice
# kept a tiling the benchmark then measured 10-14% slower than the default). A candidate must still beat
# the default by 8%: timings of one lease scatter by a few percent.
REPLACE_DEFAULT_BELOW = 0.92
# A candidate is timed only if its output on the live inputs is this close to the default's: kernels differ
# by bf16 output rounding and float32 summation order (≈2e-3 against float32 in ci/gpu/bench_kernels.py), so
# a wrong decode, layout or split-K reduction shows up orders of magnitude above it.
AGREEMENT_BOUND = 2e-2


def m_bucket(m: int) -> int:
    for b in M_BUCKETS:
        if m <= b:
            return b
    return M_BUCKETS[-1]


def gemv_config(block_n: int, waves: float, warps: int = 4, prefetch: bool = True, warp_n: int = 32) -> KernelConfig:
    return KernelConfig("gemv", block_n=block_n, warp_n=warp_n, waves=waves, num_warps=warps, num_stages=2,
                        prefetch=prefetch)


def gemm_config(block_m: int, block_n: int, waves: float, warps: int = 4, stages: int = 3, w_first: bool = False,
                scale_after: bool = True, prefetch: bool = False) -> KernelConfig:
    return KernelConfig("gemm", block_m=block_m, block_n=block_n, waves=waves, num_warps=warps,
                        num_stages=stages, w_first=w_first, scale_after=scale_after, prefetch=prefetch)


def gemm16_config(block_m: int, block_n: int, waves: float, warps: int = 4, stages: int = 3) -> KernelConfig:
    return KernelConfig("gemm16", block_m=block_m, block_n=block_n, waves=waves, num_warps=warps, num_stages=stages)


def wgmma_config(block_m: int, block_n: int, waves: float, warps: int = 8, stages: int = 2,
                 max_registers: int = 0) -> KernelConfig:
    return KernelConfig("wgmma", block_m=block_m, block_n=block_n, waves=waves, num_warps=warps, num_stages=stages,
                        max_registers=max_registers)


def tma_gemv_config(block_n: int, waves: float, warps: int = 4, stages: int = 4) -> KernelConfig:
    return KernelConfig("tma_gemv", block_n=block_n, waves=waves, num_warps=warps, num_stages=stages)


def wgmma_fits(cfg: KernelConfig, bits: int) -> bool:
    """Whether the Gluon kernel's x ring (stages x rows x one K block of 16-bit values) fits an SM's 227 KiB of
    shared memory: a 2-bit block is 256 values, so W2 cannot take 256-row tiles."""
    return cfg.num_stages * cfg.block_m * block_k(bits) * 2 <= 227 * 1024


DEQUANT = KernelConfig("dequant", block_n=128, num_warps=4)
# weights (N x K) from which the Gluon kernel is the default at M=256: the smallest measured layer it beat
WGMMA_MIN_WEIGHTS = 4096 * 14336
# the Gluon kernel's tilings (Hopper; dequantize + cuBLAS elsewhere; docs/kernels.md, "A Gluon kernel for large
# M"): 128 x 128 needs 142 registers, so one 8-warp program per SM; waves 2 splits K for narrow N. Capped at 128
# registers two programs fit (ptxas keeps the MMAs asynchronous): the M=128 default for large W4 g128 layers
# since the sixth session (default_config).
WGMMA_TILINGS = (wgmma_config(128, 128, 1), wgmma_config(256, 128, 1), wgmma_config(128, 128, 2),
                 wgmma_config(128, 64, 1, warps=4, stages=3), wgmma_config(128, 128, 1, stages=3),
                 wgmma_config(128, 128, 1, max_registers=128))
# at M=64 one warpgroup per 64 x 128 tile: 101.0 / 33.6 us against gemm16's 109.1 / 38.8 on W4 8192x28672 and
# W2 4096x14336, 0.86-0.89x on three other W4 shapes (H200, sixth session): a candidate, not a default
WGMMA_M64 = wgmma_config(64, 128, 2, warps=4, stages=3)
# two more M=64 candidates (H200, eighth session, ci/gpu/probe_wgmma.py --ms 64): 64 x 64 tiles split to 4 waves took
# 32.4 us on W4 g128 asym 4096x14336 against 35.3 for WGMMA_M64 and 46.4 for gemm16's default; two warpgroups per
# 64 x 128 tile took 31.8 on W2 g64 4096x14336 against 33.5 and 38.8. On W4 g128 sym gemm16 stays ahead except on
# 8192x28672 (98.6-100.6 against 107.4). Word tiles two blocks ahead instead of one were no faster (not kept).
WGMMA_M64_N64 = wgmma_config(64, 64, 4, warps=4, stages=3)
WGMMA_M64_W8 = wgmma_config(64, 128, 2, warps=8, stages=3)
# the Gluon TMA gemv's tilings (Hopper; the Triton gemv elsewhere; docs/kernels.md, "A gemv fed by TMA"): the
# best of each measured W2/W4 shape (H200, sixth session)
TMA_GEMV_TILINGS = (tma_gemv_config(64, 4), tma_gemv_config(64, 8, stages=6), tma_gemv_config(128, 3),
                    tma_gemv_config(128, 2), tma_gemv_config(128, 4, warps=2))
LARGE_TILE = gemm_config(128, 256, 0, warps=8, scale_after=False)


def _few_zero_corrections(bits: int, group_size: int) -> bool:
    """Whether asym gemm16 corrects at most one group per 4-bit K block (128 values): measured faster than
    gemm_kernel there; narrower groups add a correction and a row sum of x each (docs/kernels.md)."""
    return bits == 4 and (group_size == -1 or group_size >= 128)


def default_config(mb: int, n: int, k: int, bits: int, sym: bool = True, group_size: int = 128) -> KernelConfig:
    """The configuration used when not tuning: the fastest measured (docs/kernels.md).

    Every default must fit in shared memory for its bit width: it is what runs under CUDA-graph capture.
    group_size as in the checkpoint (-1: per channel).
    """
    if mb == 1:
        if bits == 2:
            # H200, 2026-12-04, sixth session (ci/gpu/probe_tma_gemv.py): the TMA-fed Gluon gemv at 64 columns
            # took 15.1 / 14.1 / 11.4 us on W2 g64 4096x14336, g64 14336x4096, g32 asym 4096x6144 against 15.5 /
            # 16.4 / 15.5 for the Triton gemv; on W4 g128 it lost. Off Hopper it runs the Triton gemv default.
            return tma_gemv_config(64, 4)
        # prefetching the next block costs 3-bit (three word tiles) more than it gains
        return GEMV_DEFAULT if bits != 3 else replace(GEMV_DEFAULT, prefetch=False)
    if bits == 4 and sym and group_size == 128 and mb == 128 and n * k >= WGMMA_MIN_WEIGHTS:
        # H200, 2026-12-04, sixth session (ci/gpu/probe_wgmma.py): 128 x 128 Gluon tiles capped at 128 registers
        # (two programs per SM) took 50.3 / 56.1 / 139.9 us on 4096x14336 / 14336x4096 / 8192x28672 against
        # 49.7 / 60.4 / 174.4 for gemm16's 64 x 128 default (g128; with g32 the capped tiling took 69.6 us)
        return wgmma_config(128, 128, 1, max_registers=128)
    if bits == 4 and mb == 256 and n * k >= WGMMA_MIN_WEIGHTS:
        # H200, 2026-12-04, fifth session (docs/kernels.md, "A Gluon kernel for large M"): 256 x 128 Gluon tiles
        # took 57.2 / 70.9 / 231.1 us on 4096x14336 / 14336x4096 / 8192x28672 against 90.1 / 90.4 / 340.9 for
        # dequantize + cuBLAS, but 63.3 against 39.0 on 4096x6144, whose 48 tiles leave most SMs idle
        return wgmma_config(256, 128, 1)
    if not sym and mb <= 128 and _few_zero_corrections(bits, group_size):
        # H200 sweep of 2026-12-04 (ci/gpu/probe_gemm16.py, W4 g128 asym, three shapes): 1.21-1.46x gemm_kernel
        # at M=16, 1.27-1.40x at 32, 1.07-1.13x at 64, 1.08-1.27x at 128
        if mb <= 16:
            return gemm16_config(16, 128, 4)
        if mb <= 32:
            return gemm16_config(32, 128, 4)
        if mb <= 64:
            return gemm16_config(64, 128, 2, stages=3)
        return gemm16_config(128, 128, 1, warps=8)
    if sym and bits in (2, 4) and mb <= 128:
        # H200 sweeps (ci/gpu/probe_gemm16.py; docs/kernels.md, "The register-operand gemm"): with its word
        # tiles pipelined (32-bit loads), gemm16 beats gemm_kernel's defaults at M=16-64 on every shape
        # measured and dequantize + cuBLAS at M=128; a 3-stage pipeline wins from M=32 on.
        if mb <= 16:
            # W4: a third stage since the decode's fused LOP3 and the scale prefetch (2026-12-04, fourth
            # session: 18.8 / 18.7 / 50.9 against 19.1 / 19.3 / 60.1 us); W2 measured even
            return gemm16_config(16, 128, 4, stages=3 if bits == 4 else 2)
        if mb <= 32:
            return gemm16_config(32, 128, 4, stages=3) if bits == 4 else gemm16_config(32, 64, 4, stages=2)
        if mb <= 64:
            return gemm16_config(64, 128, 2, stages=3)
        return gemm16_config(64, 128, 1, stages=3)
    if sym and bits == 3 and mb <= 64:
        # H200 sweep of 2026-12-04 (ci/gpu/probe_gemm16.py, docs/kernels.md): the 3-bit gemm16 beats gemm_kernel
        # and dequantize + cuBLAS at M=16-32 on every shape (1.24-1.80x) and at M=64 on three of four; two
        # stages from 32 rows on, since a third stage halves the programs per SM. It loses at M=128.
        return gemm16_config(16, 64, 4) if mb <= 16 else gemm16_config(32, 128, 4, stages=2)
    # H100 sweep (ci/gpu/probe_gemm.py, docs/kernels.md): 2- and 3-bit decode more slices per word, so
    # narrower tiles win and dequantize + cuBLAS takes over at a smaller M; 3-bit's three word tiles do not
    # fit a 64 x 128 tile's pipeline in shared memory at all.
    if bits == 3:
        return gemm_config(16, 64, 4, w_first=True) if mb <= 32 else DEQUANT
    if mb <= 16:
        return gemm_config(16, 64 if bits == 2 else 128, 4, w_first=True)
    if mb <= 32:
        return gemm_config(16, 128, 4, warps=2, w_first=True) if bits == 2 else gemm_config(64, 128, 2)
    if mb <= 64 or (mb <= 128 and bits != 2):
        return gemm_config(64, 64 if bits == 2 else 128, 2)
    return DEQUANT


def _gemm16_candidates(mb: int, bits: int) -> list[KernelConfig]:
    """gemm16 tilings worth timing for one M bucket; 3-bit: those that compile for sm_90 without spills
    (ci/kernel_sass.py), fit shared memory and came within 10% of the best on some shape."""
    if bits == 3:
        if mb <= 16:
            return [gemm16_config(16, 64, 4), gemm16_config(16, 128, 4, stages=2), gemm16_config(16, 128, 4)]
        return [gemm16_config(32, 128, 4, stages=2), gemm16_config(32, 64, 4, stages=2),
                gemm16_config(64, 128, 2, warps=8, stages=2)]
    if mb <= 16:
        # 16 x 128 at 8 waves, 4 stages: 59.1 us against the default's 67.1 on W4 8192 x 28672 (H200)
        return [gemm16_config(16, 128, 4, stages=2), gemm16_config(16, 128, 4), gemm16_config(16, 64, 4),
                gemm16_config(16, 128, 8), gemm16_config(16, 128, 8, stages=4)]
    if mb <= 64:
        return [gemm16_config(32, 128, 4), gemm16_config(32, 64, 4, stages=2), gemm16_config(64, 128, 2),
                gemm16_config(64, 128, 2, stages=2)]
    return [gemm16_config(64, 128, 1), gemm16_config(128, 128, 1, warps=8)]


def candidates(mb: int, n: int, k: int, bits: int, sym: bool = True, group_size: int = 128) -> list[KernelConfig]:
    """What the autotuner times for one M bucket (the default first)."""
    out = [default_config(mb, n, k, bits, sym, group_size)]
    if mb <= 4:
        out.append(GEMV_DEFAULT)
        out += [gemv_config(bn, w, warps, prefetch=pf, warp_n=wn) for bn, wn, w, warps, pf in (
            (128, 32, 4, 4, False), (128, 32, 3, 4, True), (128, 32, 6, 4, False), (128, 32, 8, 4, False),
            (64, 32, 6, 2, True), (64, 32, 8, 2, True), (128, 64, 4, 4, True))]
        if bits != 3:
            out += list(TMA_GEMV_TILINGS)
    if mb == 64 and bits in (2, 4):
        out += [WGMMA_M64, WGMMA_M64_N64, WGMMA_M64_W8]
    if 1 < mb <= 16:
        out += [gemm_config(16, bn, w, w_first=wf, prefetch=pf) for bn, w, wf, pf in (
            (128, 4, True, False), (64, 4, True, False), (128, 4, True, True), (128, 2, True, False),
            (128, 2, True, True), (128, 2, False, False), (64, 2, False, True))]
        out.append(gemm_config(16, 128, 4, warps=2, w_first=True))
    elif 16 < mb <= 128:
        out += [gemm_config(bm, 128, w, w_first=wf, prefetch=pf) for bm, w, wf in ((32, 1, True), (64, 2, False))
                if bm <= mb for pf in (False, True)]
        out += [gemm_config(16, 128, 4, warps=2, w_first=True), gemm_config(16, 64, 4, w_first=True),
                gemm_config(64, 64, 2)]
    if bits in (2, 3, 4) and 1 < mb <= (64 if bits == 3 else 128):
        # 3-bit gemm16 loses to dequantize + cuBLAS at M=128 (docs/kernels.md)
        out += _gemm16_candidates(mb, bits)
    if mb >= 128:
        out.append(LARGE_TILE)
        if bits in (2, 4):
            out += [c for c in WGMMA_TILINGS if wgmma_fits(c, bits)]
    if mb >= 64:
        out.append(DEQUANT)
    seen: list[KernelConfig] = []
    for c in out:
        if c not in seen:
            seen.append(c)
    return seen


def native_candidates(x: torch.Tensor, p: PreparedWeight) -> list[KernelConfig]:
    """The M bucket's candidates for this call, the default first; the others only where they run their own
    kernel (a Gluon candidate off Hopper runs its fallback, another candidate: timing it again is waste)."""
    cands = candidates(m_bucket(x.shape[0]), p.out_features, p.in_features, p.bits, p.zero_point >= 0,
                       p.group_size)
    return cands[:1] + [c for c in cands[1:] if runs_natively(x, p, c)]


@lru_cache(maxsize=16)
def _device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


# what the tuner's choices depend on besides the key: a change to any of these starts a new cache file
_FINGERPRINTED = ("triton_kernels.py", "wgmma_gemm.py", "launch.py", "layout.py", "tuning.py", "timing.py")


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/vllm_autoround/tune-<fingerprint>.json`` (``~/.cache`` without XDG_CACHE_HOME).

    The fingerprint hashes the kernel and tuner sources and the Triton and torch versions, so a choice timed
    for other code is never reused; a restart of the same code skips the timing (minutes for a large model).
    """
    digest = hashlib.sha256()
    for name in _FINGERPRINTED:
        digest.update((Path(__file__).parent / name).read_bytes())
    for dist in ("triton", "torch"):
        try:
            digest.update(f"{dist}={metadata.version(dist)};".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{dist}=?;".encode())
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vllm_autoround" / f"tune-{digest.hexdigest()[:16]}.json"


def _cache_path_from_env() -> Path | None:
    """The file named by VLLM_AUTOROUND_TUNE_CACHE (empty: none); unset, the default file, unless tuning is off:
    `VLLM_AUTOROUND_TUNE=0` means the measured defaults, not choices an earlier process timed."""
    value = os.environ.get("VLLM_AUTOROUND_TUNE_CACHE")
    if value is None:
        return default_cache_path() if Tuner.enabled() else None
    return Path(value) if value.strip() else None


def read_choices(path: Path) -> dict[str, KernelConfig]:
    """A tuning cache file's choices; ValueError (JSONDecodeError included) if it is not one."""
    raw = json.loads(path.read_text())
    try:
        return {key: KernelConfig(**cfg) for key, cfg in raw.items()}
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"not a kernel tuning cache: {exc}") from exc


class Tuner:
    """Per-key choice of :class:`KernelConfig`; thread-safe, persisted as JSON (module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, KernelConfig] = {}
        self._path = _cache_path_from_env()
        if self._path is not None and self._path.exists():
            try:
                self._cache = read_choices(self._path)
            except (OSError, ValueError) as exc:
                _log.warning("vllm_autoround: ignoring the kernel tuning cache %s (%s); kernels will be re-timed",
                             self._path, exc)

    @staticmethod
    def enabled() -> bool:
        return os.environ.get("VLLM_AUTOROUND_TUNE", "1") != "0"

    @staticmethod
    def key(x: torch.Tensor, p: PreparedWeight) -> str:
        dev = _device_name(x.device.index or 0) if x.device.type == "cuda" else x.device.type
        zero = "sym" if p.zero_point >= 0 else "asym"
        return (f"{dev}|w{p.bits}|g{p.group_size}|{zero}|{str(x.dtype).removeprefix('torch.')}|"
                f"m{m_bucket(x.shape[0])}|n{p.out_features}|k{p.in_features}")

    def choose(self, x: torch.Tensor, p: PreparedWeight) -> KernelConfig:
        key = self.key(x, p)
        cfg = self._cache.get(key)
        if cfg is not None:
            return cfg
        mb = m_bucket(x.shape[0])
        if not self.enabled() or x.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
            return default_config(mb, p.out_features, p.in_features, p.bits, p.zero_point >= 0, p.group_size)
        cfg = self._tune(x, p, native_candidates(x, p))
        with self._lock:
            self._cache[key] = cfg
            self._save()
        return cfg

    @staticmethod
    def _tune(x: torch.Tensor, p: PreparedWeight, cands: list[KernelConfig]) -> KernelConfig:
        copies = rotated_copies(p)
        default = cands[0]
        reference = _reference_output(x, p, default)
        times: dict[KernelConfig, float] = {}
        for cfg in cands:
            try:
                err = 0.0 if cfg == default else relative_difference(run(x, p, cfg), reference)
                if not err <= AGREEMENT_BOUND:
                    _log.warning("vllm_autoround: kernel %s differs from the default by %.2e on %s; not used",
                                 cfg, err, Tuner.key(x, p))
                    continue
                times[cfg] = graph_time_us([lambda q=q, cfg=cfg: run(x, q, cfg) for q in copies], reps=10,
                                           min_calls=2 * len(copies))
            except Exception:  # noqa: BLE001 - a config that does not compile or fit here is skipped
                continue
        return pick(times, default)

    def _save(self) -> None:
        """Atomic write of every choice so far; a cache that cannot be written is given up, with a warning."""
        if self._path is None:
            return
        data = {key: cfg.to_dict() for key, cfg in self._cache.items()}
        try:
            write_text_atomic(self._path, json.dumps(data, indent=1, sort_keys=True))
        except OSError as exc:
            _log.warning("vllm_autoround: cannot write the kernel tuning cache %s (%s); choices stay in memory",
                         self._path, exc)
            self._path = None


def _reference_output(x: torch.Tensor, p: PreparedWeight, default: KernelConfig) -> torch.Tensor:
    """What every candidate must reproduce: the default's output (dequantize + cuBLAS if it cannot run)."""
    try:
        return run(x, p, default)
    except Exception:  # noqa: BLE001 - the default does not fit this device: fall back to the plainest path
        return run(x, p, DEQUANT)


def relative_difference(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float32; NaN when either holds a non-finite value."""
    out, ref = out.float(), ref.float()
    if not (torch.isfinite(out).all() and torch.isfinite(ref).all()):
        return float("nan")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def pick(times: dict[KernelConfig, float], default: KernelConfig) -> KernelConfig:
    """The fastest timed configuration if it beats the default clearly (or the default did not run)."""
    if not times:
        return default
    best = min(times, key=times.__getitem__)
    if default in times and times[best] >= REPLACE_DEFAULT_BELOW * times[default]:
        return default
    return best


TUNER = Tuner()
