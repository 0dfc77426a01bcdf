"""Triton kernels over the repacked layout (:mod:`vllm_autoround.kernels.layout`).

Three kernels share one decoder:

* ``gemv_kernel``: M rows handled one per program row; CUDA cores; split-K. The decode path (M=1).
* ``gemm_kernel``: ``tl.dot`` tiles ``[BLOCK_M, BLOCK_N]``, optionally with the weight as the left
  operand (``W_FIRST``, computing ``yᵀ = W xᵀ`` so that small M fills the MMA's narrow side); split-K.
* ``dequant_kernel``: writes ``W[K, N]`` in the activation dtype for a following cuBLAS matmul (large M).

Decoding (``_decode``): a field of ``bits`` bits at bit ``pos`` of a word becomes an exact float32 by
OR-ing it under the exponent of ``2**(23 - pos)`` (a "magic number") and subtracting ``2**(23-pos)``
plus the zero point: one LOP3 and one FADD per value, and no int-to-float conversion. Fields whose top
bit would reach bit 23 are first shifted down (one shift per word, shared by all such fields).

Split-K reduction: each split writes float32 partials; the last split to arrive at a tile (an
acq_rel atomic counter per tile, in ``PreparedWeight.counters``) sums them, adds the bias, writes the
output and puts the counter back to zero. One launch, no memset.

Without CUDA (the CPU CI) they run under Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Triton decides interpreter-or-compiler when `triton` is first imported; on a machine without CUDA
# the kernels run only if TRITON_INTERPRET=1 was set before that (tests/kernels/conftest.py does).
INTERPRETED = _interpreting()
_jit = triton.jit
# M and the split-K block counts change with every call: one compiled kernel serves them all.
_jit_runtime_ints = triton.jit(do_not_specialize=["M", "num_blocks", "blocks_per_split", "split_k"])


@_jit
def _field(w, P: tl.constexpr, WIDTH: tl.constexpr, SH: tl.constexpr, zc):
    """Exact float32 ``field - zc`` for the WIDTH-bit field at bit P of ``w`` (SH: shift if needed)."""
    if P + WIDTH <= 23:
        pos = P
        fld = w & (((1 << WIDTH) - 1) << P)
    else:
        pos = P - SH
        fld = (w >> SH) & (((1 << WIDTH) - 1) << pos)
    f = (fld | ((150 - pos) << 23)).to(tl.float32, bitcast=True)
    return f - ((1 << (23 - pos)) + zc)


@_jit
def _decode(wa, wb, wc, zc, J: tl.constexpr, BITS: tl.constexpr):
    """Float32 ``code - zero`` of slice J (see the layout module) from the block's word tiles."""
    if BITS == 3:
        if J < 10:
            q = _field(wa, 3 * J, 3, 21, zc)
        elif J < 20:
            q = _field(wb, 3 * (J - 10), 3, 21, zc)
        elif J < 30:
            q = _field(wc, 3 * (J - 20), 3, 21, zc)
        elif J == 30:
            fld = ((wa >> 30) & 3) | ((wb >> 28) & 4)
            q = (fld | (150 << 23)).to(tl.float32, bitcast=True) - ((1 << 23) + zc)
        else:
            fld = ((wb >> 31) & 1) | ((wc >> 29) & 6)
            q = (fld | (150 << 23)).to(tl.float32, bitcast=True) - ((1 << 23) + zc)
    else:
        # Fields 0..D-1 are used in place; the rest after one shift by D*BITS.
        D: tl.constexpr = (23 - BITS) // BITS + 1
        q = _field(wa, J * BITS, BITS, D * BITS, zc)
    return q


@_jit
def _finish(y, offs_m, offs_n, M, N, b_ptr, out_ptr, stride_om, part_ptr, cnt_ptr, tile, pid_k, split_k,
            HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr):
    """Write the [BM, BN] float32 tile ``y`` (or, SPLIT, reduce the split-K partials: last split writes)."""
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    if not SPLIT:
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0).to(tl.float32)[None, :]
        tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        part_ptrs = part_ptr + offs_m[:, None] * N + offs_n[None, :]
        tl.store(part_ptrs + pid_k * M * N, y, mask=mask)
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == split_k - 1:
            tl.debug_barrier()
            total = tl.zeros_like(y)
            for s in range(split_k):
                total += tl.load(part_ptrs + s * M * N, mask=mask, other=0, cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0).to(tl.float32)[None, :]
            tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed", scope="gpu")


@_jit
def _group_params(s_ptr, z_ptr, g, kj, offs_n, n_mask, N, K, ZERO: tl.constexpr, BLOCK_N: tl.constexpr,
                  EVEN_K: tl.constexpr):
    """Float32 scales and zero points ``[BLOCK_N]`` of group ``g``, which starts at ``kj`` (zero past K)."""
    if EVEN_K:
        mask = n_mask
    else:
        mask = n_mask & ((offs_n * 0 + kj) < K)
    s = tl.load(s_ptr + g * N + offs_n, mask=mask, other=0).to(tl.float32)
    if ZERO < 0:
        zc = tl.load(z_ptr + g * N + offs_n, mask=mask, other=0).to(tl.float32)
    else:
        zc = tl.full([BLOCK_N], ZERO, tl.float32)
    return s, zc


@_jit
def _load_block(w_ptrs, b, N, w_mask, R: tl.constexpr, ROWS: tl.constexpr, BITS: tl.constexpr):
    """The word tiles (A, and B, C for 3 bits) of block ``b``; ``w_ptrs`` points at block 0."""
    base = w_ptrs + b * ROWS * N
    wa = tl.load(base, mask=w_mask, other=0)
    if BITS == 3:
        wb = tl.load(base + R * N, mask=w_mask, other=0)
        wc = tl.load(base + 2 * R * N, mask=w_mask, other=0)
    else:
        wb = wa
        wc = wa
    return wa, wb, wc


@_jit
def _mma(a, b, acc, dt: tl.constexpr, F32_DOT: tl.constexpr):
    """``acc + a @ b`` with operands rounded to ``dt``; F32_DOT: multiply them in float32 (the CPU
    interpreter's bfloat16 dot is wrong, so the tests round to ``dt`` and multiply in float32)."""
    if F32_DOT:
        return tl.dot(a.to(dt).to(tl.float32), b.to(dt).to(tl.float32), acc)
    else:
        return tl.dot(a.to(dt), b.to(dt), acc)


@_jit_runtime_ints
def gemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, out_ptr, part_ptr, cnt_ptr,
                M, N, K, stride_xm, stride_om, num_blocks, blocks_per_split, split_k,
                BITS: tl.constexpr, R: tl.constexpr, GS: tl.constexpr, ZERO: tl.constexpr,
                HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr,
                PREFETCH: tl.constexpr):
    """One activation row per program (axis 2); ``[R, BLOCK_N]`` partial dots reduced at the end.

    PREFETCH: issue the next block's loads before decoding this one (the loop's loads are not
    software-pipelined by Triton because they feed no ``tl.dot``). EVEN_K: K is whole blocks.
    """
    NS: tl.constexpr = 32 if BITS == 3 else 32 // BITS
    ROWS: tl.constexpr = 3 * R if BITS == 3 else R
    BK: tl.constexpr = R * NS
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_r = tl.arange(0, R)
    x_row = x_ptr + m * stride_xm
    acc = tl.zeros([R, BLOCK_N], dtype=tl.float32)
    if GS == 0:
        s, zc = _group_params(s_ptr, z_ptr, 0, 0, offs_n, n_mask, N, K, ZERO, BLOCK_N, EVEN_K)
    b_start = pid_k * blocks_per_split
    b_end = tl.minimum(b_start + blocks_per_split, num_blocks)
    w_ptrs = w_ptr + offs_r[:, None] * N + offs_n[None, :]
    w_mask = n_mask[None, :]
    if PREFETCH:
        wa, wb0, wc0 = _load_block(w_ptrs, b_start, N, w_mask, R, ROWS, BITS)
        if BITS == 3:  # only 3-bit carries three tiles through the loop
            wb = wb0
            wc = wc0
    for b in range(b_start, b_end):
        k0 = b * BK
        if PREFETCH:
            na, nb, nc = _load_block(w_ptrs, tl.minimum(b + 1, b_end - 1), N, w_mask, R, ROWS, BITS)
        else:
            wa, wb, wc = _load_block(w_ptrs, b, N, w_mask, R, ROWS, BITS)
        if BITS != 3:
            wb = wa
            wc = wa
        part = tl.zeros([R, BLOCK_N], dtype=tl.float32)
        for j in tl.static_range(NS):
            kj = k0 + j * R
            if GS != 0:
                if (j * R) % GS == 0:
                    s, zc = _group_params(s_ptr, z_ptr, kj // GS, kj, offs_n, n_mask, N, K, ZERO, BLOCK_N, EVEN_K)
            q = _decode(wa, wb, wc, zc[None, :], j, BITS)
            if EVEN_K:
                xj = tl.load(x_row + kj + offs_r).to(tl.float32)
            else:
                xj = tl.load(x_row + kj + offs_r, mask=(kj + offs_r) < K, other=0).to(tl.float32)
            part += xj[:, None] * q
            if GS != 0:
                if ((j + 1) * R) % GS == 0 or j == NS - 1:
                    acc += part * s[None, :]
                    part = tl.zeros([R, BLOCK_N], dtype=tl.float32)
        if GS == 0:
            acc += part
        if PREFETCH:
            wa = na
            if BITS == 3:
                wb = nb
                wc = nc
    y = tl.sum(acc, axis=0)
    if GS == 0:
        y = y * s
    offs_m = m + tl.arange(0, 1)
    _finish(y[None, :], offs_m, offs_n, M, N, b_ptr, out_ptr, stride_om, part_ptr, cnt_ptr,
            m * tl.num_programs(0) + pid_n, pid_k, split_k, HAS_BIAS, SPLIT)


@_jit_runtime_ints
def gemm_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, out_ptr, part_ptr, cnt_ptr,
                M, N, K, stride_xm, stride_om, num_blocks, blocks_per_split, split_k,
                BITS: tl.constexpr, R: tl.constexpr, GS: tl.constexpr, ZERO: tl.constexpr,
                HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                SPLIT: tl.constexpr, SCALE_AFTER: tl.constexpr, W_FIRST: tl.constexpr,
                F32_DOT: tl.constexpr, EVEN_K: tl.constexpr, PREFETCH: tl.constexpr):
    """Tensor-core tiles; each slice is one ``tl.dot`` with K=R.

    SCALE_AFTER: dot the exact integer ``code - zero`` (in the activation dtype) and scale the
    group's partial product, instead of scaling every weight before the dot.
    W_FIRST: compute ``accᵀ[BN, BM] = Wᵀ-tile · xᵀ-tile`` (weight as the MMA's A operand).
    """
    NS: tl.constexpr = 32 if BITS == 3 else 32 // BITS
    ROWS: tl.constexpr = 3 * R if BITS == 3 else R
    BK: tl.constexpr = R * NS
    dt = x_ptr.dtype.element_ty
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    offs_r = tl.arange(0, R)
    if W_FIRST:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if GS == 0:
        s, zc = _group_params(s_ptr, z_ptr, 0, 0, offs_n, n_mask, N, K, ZERO, BLOCK_N, EVEN_K)
    b_start = pid_k * blocks_per_split
    b_end = tl.minimum(b_start + blocks_per_split, num_blocks)
    if W_FIRST:
        w_ptrs = w_ptr + offs_r[None, :] * N + offs_n[:, None]
        w_mask = n_mask[:, None]
    else:
        w_ptrs = w_ptr + offs_r[:, None] * N + offs_n[None, :]
        w_mask = n_mask[None, :]
    if PREFETCH:
        wa, wb0, wc0 = _load_block(w_ptrs, b_start, N, w_mask, R, ROWS, BITS)
        if BITS == 3:  # only 3-bit carries three tiles through the loop
            wb = wb0
            wc = wc0
    for b in range(b_start, b_end):
        k0 = b * BK
        if PREFETCH:
            na, nb, nc = _load_block(w_ptrs, tl.minimum(b + 1, b_end - 1), N, w_mask, R, ROWS, BITS)
        else:
            wa, wb, wc = _load_block(w_ptrs, b, N, w_mask, R, ROWS, BITS)
        if BITS != 3:
            wb = wa
            wc = wa
        if SCALE_AFTER and GS != 0:
            accg = tl.zeros_like(acc)
        for j in tl.static_range(NS):
            kj = k0 + j * R
            if GS != 0:
                if (j * R) % GS == 0:
                    s, zc = _group_params(s_ptr, z_ptr, kj // GS, kj, offs_n, n_mask, N, K, ZERO, BLOCK_N, EVEN_K)
            kk = kj + offs_r
            if EVEN_K:
                k_mask = kk >= 0
            else:
                k_mask = kk < K
            if W_FIRST:
                xj = tl.load(x_ptr + offs_m[None, :] * stride_xm + kk[:, None],
                             mask=m_mask[None, :] & k_mask[:, None], other=0)
                q = _decode(wa, wb, wc, zc[:, None], j, BITS)
                if SCALE_AFTER:
                    if GS != 0:
                        accg = _mma(q, xj, accg, dt, F32_DOT)
                    else:
                        acc = _mma(q, xj, acc, dt, F32_DOT)
                else:
                    acc = _mma(q * s[:, None], xj, acc, dt, F32_DOT)
            else:
                xj = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :],
                             mask=m_mask[:, None] & k_mask[None, :], other=0)
                q = _decode(wa, wb, wc, zc[None, :], j, BITS)
                if SCALE_AFTER:
                    if GS != 0:
                        accg = _mma(xj, q, accg, dt, F32_DOT)
                    else:
                        acc = _mma(xj, q, acc, dt, F32_DOT)
                else:
                    acc = _mma(xj, q * s[None, :], acc, dt, F32_DOT)
            if SCALE_AFTER and GS != 0:
                if ((j + 1) * R) % GS == 0 or j == NS - 1:
                    if W_FIRST:
                        acc += accg * s[:, None]
                    else:
                        acc += accg * s[None, :]
                    accg = tl.zeros_like(acc)
        if PREFETCH:
            wa = na
            if BITS == 3:
                wb = nb
                wc = nc
    if SCALE_AFTER and GS == 0:
        if W_FIRST:
            acc = acc * s[:, None]
        else:
            acc = acc * s[None, :]
    if W_FIRST:
        y = tl.trans(acc)
    else:
        y = acc
    _finish(y, offs_m, offs_n, M, N, b_ptr, out_ptr, stride_om, part_ptr, cnt_ptr,
            pid_m * tl.num_programs(1) + pid_n, pid_k, split_k, HAS_BIAS, SPLIT)


@_jit
def dequant_kernel(w_ptr, s_ptr, z_ptr, out_ptr, N, K,
                   BITS: tl.constexpr, R: tl.constexpr, GS: tl.constexpr, ZERO: tl.constexpr,
                   BLOCK_N: tl.constexpr, EVEN_K: tl.constexpr):
    """``out[K, N] = (code - zero) * scale`` in ``out``'s dtype; one block of K per program row."""
    NS: tl.constexpr = 32 if BITS == 3 else 32 // BITS
    ROWS: tl.constexpr = 3 * R if BITS == 3 else R
    BK: tl.constexpr = R * NS
    b = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_r = tl.arange(0, R)
    k0 = b * BK
    w_ptrs = w_ptr + (b * ROWS + offs_r)[:, None] * N + offs_n[None, :]
    wa = tl.load(w_ptrs, mask=n_mask[None, :], other=0)
    if BITS == 3:
        wb = tl.load(w_ptrs + R * N, mask=n_mask[None, :], other=0)
        wc = tl.load(w_ptrs + 2 * R * N, mask=n_mask[None, :], other=0)
    else:
        wb = wa
        wc = wa
    for j in tl.static_range(NS):
        kj = k0 + j * R
        if GS == 0:
            if j == 0:
                s, zc = _group_params(s_ptr, z_ptr, 0, 0, offs_n, n_mask, N, K, ZERO, BLOCK_N, EVEN_K)
        else:
            if (j * R) % GS == 0:
                s, zc = _group_params(s_ptr, z_ptr, kj // GS, kj, offs_n, n_mask, N, K, ZERO, BLOCK_N, EVEN_K)
        q = _decode(wa, wb, wc, zc[None, :], j, BITS)
        kk = kj + offs_r
        tl.store(out_ptr + kk[:, None] * N + offs_n[None, :], (q * s[None, :]).to(out_ptr.dtype.element_ty),
                 mask=(kk < K)[:, None] & n_mask[None, :])
