"""Large-M dequant-GEMM for Hopper in Gluon: TMA-pipelined x, decoded weight as wgmma's register operand.

Why a second language: at M ≥ 128 the Triton kernels lose to dequantize + cuBLAS because Triton will not
apply a per-group scale inside the weight operand without sending the decoded tile through shared memory
(docs/kernels.md), so gemm16 keeps a second accumulator and drains the MMA pipe at every group. In Gluon
the layouts are explicit: the group's scales are loaded straight into the weight operand's row layout,
each slice is decoded *and scaled* in registers, one accumulator takes every MMA, and x arrives through a
TMA ring. A block's MMAs are issued without waiting in between; only after the next block's first MMA does
the kernel wait for them (and then, after a CTA barrier, refill their x stage), so ptxas overlaps each slice's
decode with the MMAs before it. Waiting after every MMA made ptxas serialize them (C7513, "non wgmma instructions
defining input registers").

Numerics equal dequantize + cuBLAS: each weight is ``round((q − z) · s)`` in the activation dtype (the
scale is split into a high and a low part in that dtype, ``(q − z)·s_lo`` is exact, and one FMA rounds
once), accumulated in float32.

Bits 2 and 4 (one int32 word row yields ``32/bits`` 16-row slices), sym or asym, any group size the
layout allows. Needs Triton's Gluon (3.6 API) and an sm_90 GPU; ``supported()`` says whether a call can
use it, and the caller falls back otherwise.
"""

from __future__ import annotations

import functools

import torch

from vllm_autoround.kernels import triton_kernels as tk
from vllm_autoround.kernels.gluon_api import (
    HAVE_GLUON,
    TensorDescriptor,
    gl,
    gluon,
    is_hopper,
    mbarrier,
    thread_barrier,
    tma_load,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from vllm_autoround.kernels.layout import block_k
from vllm_autoround.kernels.triton_kernels import MAGIC_BF16X2, MAGIC_F16X2, magic_field_ptx

BITS_SUPPORTED = (2, 4)
ROWS = 16  # word rows per K block (layout.INTERLEAVE)
CHUNK = 64  # x columns per TMA box: 128 bytes of bf16/fp16, the widest swizzled box


def _decode_asm(sh: int, mask: int, magic: int, sub: str, mul: str, fma: str) -> str:
    """PTX, two 16-bit lanes per register: ``w = (magic + ((h >> sh) & mask) − zc) · s_hi + (… · s_lo)``.

    $1 = codes (two int16 lanes), $2 = s_hi, $3 = s_lo, $4 = magic + zero point (two lanes each). The field
    extraction is gemm16's (:func:`~vllm_autoround.kernels.triton_kernels.magic_field_ptx`).
    """
    return (f"{{ .reg .b32 t, q, l; {magic_field_ptx(sh, mask, magic, 'q', '$1')} "
            f"{sub} q, q, $4; {mul} l, q, $3; {fma} $0, q, $2, l; }}")


if HAVE_GLUON:
    R = gl.constexpr(ROWS)
    X_CHUNK = gl.constexpr(CHUNK)
    # indexed by 256 * is_fp16 + 16 * shift + mask
    _DECODE: gl.constexpr = gl.constexpr(tuple(
        _decode_asm(sh, mask, magic, sub, mul, fma)
        for magic, sub, mul, fma in ((MAGIC_BF16X2, "sub.rn.bf16x2", "mul.rn.bf16x2", "fma.rn.bf16x2"),
                                     (MAGIC_F16X2, "sub.rn.f16x2", "mul.rn.f16x2", "fma.rn.f16x2"))
        for sh in range(16) for mask in range(16)))

    @gluon.jit
    def _decode(h, s_hi, s_lo, zc, SH: gl.constexpr, BITS: gl.constexpr, IS_FP16: gl.constexpr):
        return gl.inline_asm_elementwise(_DECODE[256 * IS_FP16 + 16 * SH + (1 << BITS) - 1], "=r,r,r,r,r",
                                         [h, s_hi, s_lo, zc], dtype=s_hi.dtype, is_pure=True, pack=2)

    @gluon.jit
    def _group(s_ptr, z_ptr, g, offs_n, n_mask, N, ZERO: gl.constexpr, dt: gl.constexpr):
        """Group g's scales split as ``s_hi + s_lo`` in dt, and ``magic + zero point`` in dt, per row."""
        s = gl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0).to(gl.float32)
        s_hi = s.to(dt)
        s_lo = (s - s_hi.to(gl.float32)).to(dt)
        magic: gl.constexpr = 1024.0 if dt == gl.float16 else 128.0
        if ZERO < 0:
            zc = (gl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0).to(gl.float32) + magic).to(dt)
        else:
            zc = gl.full(offs_n.shape, magic + ZERO, dt, offs_n.type.layout)
        return s_hi, s_lo, zc

    @gluon.jit
    def _issue(x_desc, x_smem, ready, i, st, off_m, CH: gl.constexpr, BK: gl.constexpr):
        """TMA loads of K block i's x columns (CH boxes of X_CHUNK) into stage st."""
        mbarrier.expect(ready.index(st), CH * x_desc.block_type.nbytes)
        for c in gl.static_range(CH):
            tma_load(x_desc, [off_m, i * BK + c * X_CHUNK], ready.index(st), x_smem.index(st * CH + c))

    @gluon.jit
    def _words(w_ptr, i, offs_r, offs_n, n_mask, N):
        """Block i's ``[BLOCK_N, R]`` word tile, loaded straight into the weight operand's layout."""
        return gl.load(w_ptr + gl.expand_dims(i * R + offs_r, 0) * N + gl.expand_dims(offs_n, 1),
                       mask=gl.expand_dims(n_mask, 1), other=0)

    # M and the split-K counts change with every call: Triton would otherwise compile a variant per class of
    # them (== 1, divisible by 16), some first met in the middle of serving (vLLM's JIT monitor, 2026-12-04)
    @gluon.jit(do_not_specialize=["M", "blocks_per_split", "split_k"])
    def wgmma_gemm_kernel(x_desc, w_ptr, s_ptr, z_ptr, b_ptr, out_ptr, part_ptr, cnt_ptr, M, N, K, stride_om,
                          blocks_per_split, split_k, BITS: gl.constexpr, GS: gl.constexpr, ZERO: gl.constexpr,
                          HAS_BIAS: gl.constexpr, SPLIT: gl.constexpr, REDUCE: gl.constexpr, BLOCK_M: gl.constexpr,
                          BLOCK_N: gl.constexpr, STAGES: gl.constexpr, SCALES_AHEAD: gl.constexpr,
                          num_warps: gl.constexpr):
        """``out[M, N] = x · dequant(W)ᵀ (+ bias)`` as ``outᵀ = W · xᵀ``: the weight tile is wgmma's A operand
        (registers), x's tile its B operand (shared memory, via TMA). Grid: (M tiles, N tiles, K splits); with
        SPLIT each split stores its float32 partial sum to ``part_ptr[split]``; with REDUCE too the last split
        to arrive at the tile (an atomic counter, handed back zero) sums them, else the launcher does."""
        NS: gl.constexpr = 32 // BITS
        BK: gl.constexpr = R * NS
        CH: gl.constexpr = BK // X_CHUNK
        SPC: gl.constexpr = X_CHUNK // R  # slices per x chunk
        dt: gl.constexpr = x_desc.dtype
        IS_FP16: gl.constexpr = dt == gl.float16
        pid_m = gl.program_id(0)
        pid_n = gl.program_id(1)
        pid_k = gl.program_id(2)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        b_start = pid_k * blocks_per_split
        nb = gl.minimum(blocks_per_split, gl.cdiv(K, BK) - b_start)

        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                      instr_shape=[16, BLOCK_M, 16])
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        row_layout: gl.constexpr = gl.SliceLayout(1, a_layout)

        x_smem = gl.allocate_shared_memory(dt, [STAGES * CH, BLOCK_M, X_CHUNK], x_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for p in gl.static_range(STAGES):
            mbarrier.init(ready.index(p), count=1)
        for p in gl.static_range(STAGES - 1):
            if p < nb:
                _issue(x_desc, x_smem, ready, b_start + p, p, off_m, CH, BK)

        offs_n = off_n + gl.arange(0, BLOCK_N, layout=row_layout)
        offs_r = gl.arange(0, R, layout=gl.SliceLayout(0, a_layout))
        n_mask = offs_n < N
        acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=mma)
        GSTEP: gl.constexpr = GS if GS < BK else BK  # K values from one scale load to the next
        LAST_G = (K - 1) // gl.maximum(GS, 1)  # clamped: K's padding meets zero activations, not a real group
        if GS <= 0:
            s_hi, s_lo, zc = _group(s_ptr, z_ptr, 0, offs_n, n_mask, N, ZERO, dt)
        elif SCALES_AHEAD:
            # one step ahead: a group's scales load while the step before it is decoded
            s_hi_n, s_lo_n, zc_n = _group(s_ptr, z_ptr, gl.minimum(b_start * BK // GS, LAST_G), offs_n, n_mask, N,
                                          ZERO, dt)
        words_next = _words(w_ptr, b_start, offs_r, offs_n, n_mask, N)
        for i in range(nb):
            st = i % STAGES
            b = b_start + i
            # the word tile one block ahead: its DRAM latency hides behind this block's MMAs
            words = words_next
            words_next = _words(w_ptr, gl.minimum(b + 1, b_start + nb - 1), offs_r, offs_n, n_mask, N)
            lo = words.to(gl.int16)
            hi = (words >> 16).to(gl.int16)
            mbarrier.wait(ready.index(st), (i // STAGES) & 1)
            for j in gl.static_range(NS):
                if GS > 0:
                    if (j * R) % GSTEP == 0:
                        if SCALES_AHEAD:
                            s_hi = s_hi_n
                            s_lo = s_lo_n
                            zc = zc_n
                            g = gl.minimum((b * BK + j * R + GSTEP) // GS, LAST_G)
                            s_hi_n, s_lo_n, zc_n = _group(s_ptr, z_ptr, g, offs_n, n_mask, N, ZERO, dt)
                        else:
                            g = gl.minimum((b * BK + j * R) // GS, LAST_G)
                            s_hi, s_lo, zc = _group(s_ptr, z_ptr, g, offs_n, n_mask, N, ZERO, dt)
                if j < NS // 2:
                    h = lo
                else:
                    h = hi
                a = _decode(h, gl.expand_dims(s_hi, 1).broadcast_to(h.shape),
                            gl.expand_dims(s_lo, 1).broadcast_to(h.shape),
                            gl.expand_dims(zc, 1).broadcast_to(h.shape), (j % (NS // 2)) * BITS, BITS, IS_FP16)
                xb = x_smem.index(st * CH + j // SPC).slice((j % SPC) * R, R, dim=1).permute((1, 0))
                acc = warpgroup_mma(a, xb, acc, is_async=True)
                if j == 0:
                    # the previous block's MMAs are done: its stage takes block i + STAGES - 1, a whole block
                    # before it is needed. The wait covers this warpgroup's MMAs only, and one thread of
                    # warpgroup 0 issues the refill: the CTA barrier makes every warpgroup's reads of the stage
                    # finish before TMA overwrites it
                    acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                    if i + STAGES - 1 < nb:
                        thread_barrier()
                        _issue(x_desc, x_smem, ready, b + STAGES - 1, (i + STAGES - 1) % STAGES, off_m, CH, BK)
            # (a wait that holds nothing up: the loop carries the accumulator as a tensor, not an MMA token)
            acc = warpgroup_mma_wait(num_outstanding=NS - 1, deps=(acc,))
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        for p in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(p))

        out_layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[8, 1], threads_per_warp=[16, 2],
                                                    warps_per_cta=[1, num_warps], order=[0, 1])
        y = gl.convert_layout(acc, out_layout)
        on = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, out_layout))
        om = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, out_layout))
        mask = gl.expand_dims(om < M, 0) & gl.expand_dims(on < N, 1)
        store_tile(y, out_ptr + gl.expand_dims(om, 0) * stride_om + gl.expand_dims(on, 1),
                    part_ptr + gl.expand_dims(om, 0) * N + gl.expand_dims(on, 1), mask,
                    b_ptr + gl.expand_dims(on, 1) + gl.expand_dims(om, 0) * 0, M * N, cnt_ptr,
                    pid_m * gl.num_programs(1) + pid_n, pid_k, split_k, HAS_BIAS, SPLIT, REDUCE)

    @gluon.jit
    def store_tile(y, out_ptrs, part_ptrs, mask, bias_ptrs, part_stride, cnt_ptr, tile, pid_k, split_k,
                    HAS_BIAS: gl.constexpr, SPLIT: gl.constexpr, REDUCE: gl.constexpr):
        """Write a float32 tile (+ bias), any shape and layout (the TMA gemv's row vector too). SPLIT: store this
        split's partial; REDUCE too: the last split to arrive at the tile (an atomic counter, handed back zero)
        sums the partials and writes the tile."""
        if SPLIT:
            gl.store(part_ptrs + pid_k * part_stride, y, mask=mask)
            if REDUCE:
                thread_barrier()
                if gl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu") == split_k - 1:
                    thread_barrier()
                    y = gl.zeros_like(y)
                    for sp in range(split_k):
                        y += gl.load(part_ptrs + sp * part_stride, mask=mask, other=0, cache_modifier=".cg")
                    if HAS_BIAS:
                        y += gl.load(bias_ptrs, mask=mask, other=0).to(gl.float32)
                    gl.store(out_ptrs, y.to(out_ptrs.dtype.element_ty), mask=mask)
                    gl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed", scope="gpu")
        else:
            if HAS_BIAS:
                y += gl.load(bias_ptrs, mask=mask, other=0).to(gl.float32)
            gl.store(out_ptrs, y.to(out_ptrs.dtype.element_ty), mask=mask)


def supported(x: torch.Tensor, bits: int, group_size: int) -> bool:
    """Whether :func:`wgmma_gemm` can take this call: Gluon present, sm_90, bits 2/4, groups that start at a
    16-row slice (0 = one group), x TMA-aligned."""
    if not HAVE_GLUON or bits not in BITS_SUPPORTED or x.device.type != "cuda":
        return False
    bk = block_k(bits)
    if group_size > 0 and bk % group_size and group_size % bk:
        return False
    if x.dtype not in (torch.bfloat16, torch.float16) or x.dim() != 2 or x.stride(1) != 1:
        return False
    if not is_hopper(x.device.index or 0):
        return False
    return (x.stride(0) * x.element_size()) % 16 == 0 and x.data_ptr() % 16 == 0


@functools.cache
def x_layout(block_m: int, is_fp16: bool):
    return gl.NVMMASharedLayout.get_default_for([block_m, CHUNK], gl.float16 if is_fp16 else gl.bfloat16)


def wgmma_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               bias: torch.Tensor | None, out: torch.Tensor, *, bits: int, group_size: int, zero_point: int,
               in_features: int, block_m: int = 128, block_n: int = 128, stages: int = 2, num_warps: int = 8,
               split_k: int = 1, max_registers: int = 0, counters: torch.Tensor | None = None) -> torch.Tensor:
    """``out = x · dequant(W)ᵀ (+ bias)`` on the repacked weight (kernels.layout); see :func:`supported`.

    split_k > 1 splits the K blocks over that many programs per tile (for few output tiles). Their partial
    sums are added in the kernel when ``counters`` (zero, one per tile) is given, by torch otherwise: one
    program reading every split's tile is a long serial tail for large tiles, three torch kernels for small.
    max_registers caps ptxas's registers per thread (128 lets two 8-warp programs share an SM); under a cap the
    scales are loaded when their group starts, not one group ahead: the extra registers spilled (H200: 137.8
    against 166.3 us on W4 8192x28672 at M=128).
    """
    m, n = x.shape[0], qweight.shape[1]
    num_blocks = qweight.shape[0] // ROWS
    per = -(-num_blocks // max(1, min(split_k, num_blocks)))
    split = -(-num_blocks // per)
    grid = (-(-m // block_m), -(-n // block_n), split)
    reduce = split > 1 and counters is not None and grid[0] * grid[1] <= counters.numel()
    x_desc = TensorDescriptor(x, [m, in_features], [x.stride(0), 1], [block_m, CHUNK],
                              x_layout(block_m, x.dtype == torch.float16))
    part = torch.empty(split, m, n, device=x.device, dtype=torch.float32) if split > 1 else out
    wgmma_gemm_kernel[grid](x_desc, qweight, scales, zeros if zero_point < 0 else scales,
                            bias if bias is not None else out, out, part, counters if reduce else part, m, n,
                            in_features, out.stride(0), per, split,
                            BITS=bits, GS=group_size if group_size > 0 else 0, ZERO=zero_point,
                            HAS_BIAS=bias is not None, SPLIT=split > 1, REDUCE=reduce, BLOCK_M=block_m,
                            BLOCK_N=block_n, STAGES=stages, SCALES_AHEAD=not max_registers, num_warps=num_warps,
                            **({"maxnreg": max_registers} if max_registers else {}))
    if split > 1 and not reduce:
        add_partials(part, bias, out)
    return out


SUM_BLOCK_M, SUM_BLOCK_N = 32, 128


def add_partials(part: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """``out = Σ part[split] (+ bias)``: split-K partials the kernel left for a second pass, summed in one.

    At M=256 on 4096-wide layers the split kernel leaves 4 partials; torch's sum, bias add and cast read and wrote
    them in two or three kernels (135 us per decode step at batch 256 on the H200, 2026-12-04)."""
    m, n = out.shape
    if out.stride(1) != 1 or not part.is_contiguous():
        raise ValueError("add_partials: out needs unit column stride and part must be contiguous")
    tk.sum_partials_kernel[(-(-m // SUM_BLOCK_M), -(-n // SUM_BLOCK_N))](
        part, bias if bias is not None else out, out, m, n, out.stride(0), part.shape[0],
        HAS_BIAS=bias is not None, BLOCK_M=SUM_BLOCK_M, BLOCK_N=SUM_BLOCK_N, num_warps=4)
