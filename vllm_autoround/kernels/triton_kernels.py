"""Triton kernels over the repacked layout (:mod:`vllm_autoround.kernels.layout`).

Four kernels:

* ``gemv_kernel``: M rows handled one per program row; CUDA cores; split-K. The decode path (M=1).
* ``gemm_kernel``: ``tl.dot`` tiles ``[BLOCK_M, BLOCK_N]``, optionally with the weight as the left
  operand (``W_FIRST``, computing ``yᵀ = W xᵀ`` so that small M fills the MMA's narrow side); split-K.
* ``gemm16_kernel``: weight-first ``tl.dot`` tiles decoded from 16-bit lanes, so the weight operand stays
  in registers (bits 2 and 4, sym).
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


def _rows_outer() -> bool:
    """Whether the gemv tile puts its R rows before its column repeats ([R, NREP, WARP_N]).

    The gemv kernel wants the lanes left over from the columns to spread over the rows (one row per
    thread, so one x value serves all of a thread's columns). Triton orders two equally non-contiguous
    axes by index before 3.7 and by reverse index from 3.7 on (seen compiling for sm_90 with 3.6, 3.7.1,
    3.8 and 3.9: 3.3 against 4.0 instructions per value), so the axis that should come second is put
    first or last accordingly.
    """
    major, minor = (int(v) for v in triton.__version__.split(".")[:2])
    return (major, minor) < (3, 7)


ROWS_OUTER = _rows_outer()
# M and the split-K block counts change with every call: one compiled kernel serves them all.
_jit_runtime_ints = triton.jit(do_not_specialize=["M", "num_blocks", "blocks_per_split", "split_k", "opaque_zero"])


@_jit
def _field(w, P: tl.constexpr, WIDTH: tl.constexpr, SH: tl.constexpr, zc, opaque_zero):
    """Exact float32 ``field - zc`` for the WIDTH-bit field at bit P of ``w`` (SH: shift if needed).

    ``opaque_zero`` is 0 at run time; adding it keeps the exponent in a register (see ``_shifted_field``).
    """
    if P + WIDTH <= 23:
        pos = P
        fld = w & (((1 << WIDTH) - 1) << P)
    else:
        pos = P - SH
        fld = (w >> SH) & (((1 << WIDTH) - 1) << pos)
    f = (fld | (opaque_zero + ((150 - pos) << 23))).to(tl.float32, bitcast=True)
    return f - ((1 << (23 - pos)) + zc)


@_jit
def _decode(wa, wb, wc, zc, J: tl.constexpr, BITS: tl.constexpr, opaque_zero):
    """Float32 ``code - zero`` of slice J (see the layout module) from the block's word tiles."""
    if BITS == 3:
        if J < 10:
            q = _field(wa, 3 * J, 3, 21, zc, opaque_zero)
        elif J < 20:
            q = _field(wb, 3 * (J - 10), 3, 21, zc, opaque_zero)
        elif J < 30:
            q = _field(wc, 3 * (J - 20), 3, 21, zc, opaque_zero)
        elif J == 30:
            fld = ((wa >> 30) & 3) | ((wb >> 28) & 4)
            q = (fld | (opaque_zero + (150 << 23))).to(tl.float32, bitcast=True) - ((1 << 23) + zc)
        else:
            fld = ((wb >> 31) & 1) | ((wc >> 29) & 6)
            q = (fld | (opaque_zero + (150 << 23))).to(tl.float32, bitcast=True) - ((1 << 23) + zc)
    else:
        # Fields 0..D-1 are used in place; the rest after one shift by D*BITS.
        D: tl.constexpr = (23 - BITS) // BITS + 1
        q = _field(wa, J * BITS, BITS, D * BITS, zc, opaque_zero)
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
    """Float32 scales and zero points ``[BLOCK_N]`` of group ``g``, which starts at ``kj`` (zero past K);
    a shared zero point comes back as a constant vector."""
    s, zc = _col_params(s_ptr, z_ptr, g, kj, K, offs_n, n_mask, N, ZERO, EVEN_K, False)
    if ZERO >= 0:
        zc = tl.full([BLOCK_N], ZERO, tl.float32)
    return s, zc


@_jit
def _next_group(kj, K, GS: tl.constexpr, BK: tl.constexpr):
    """The group whose scales the K loop loads next after the group load at ``kj``: groups narrower than a
    K block start every GS values, wider ones are (re)loaded at every block start; clamped to the last."""
    STEP: tl.constexpr = GS if GS < BK else BK
    return tl.minimum((kj + STEP) // GS, (K + GS - 1) // GS - 1)


@_jit
def _first_group(b, K, GS: tl.constexpr, BK: tl.constexpr):
    """The group of K block ``b``'s first value (clamped to the last group)."""
    return tl.minimum(b * BK // GS, (K + GS - 1) // GS - 1)


@_jit
def _load_words(ptrs, mask, WHOLE: tl.constexpr):
    """Values at ``ptrs``; masked (zero outside ``mask``) unless the tile is whole."""
    if WHOLE:
        words = tl.load(ptrs)
    else:
        words = tl.load(ptrs, mask=mask, other=0)
    return words


@_jit
def _load_block(w_ptrs, b, N, w_mask, R: tl.constexpr, ROWS: tl.constexpr, BITS: tl.constexpr,
                EVEN_N: tl.constexpr = False):
    """The word tiles (A, and B, C for 3 bits) of block ``b``; ``w_ptrs`` points at block 0."""
    base = w_ptrs + b * ROWS * N
    wa = _load_words(base, w_mask, EVEN_N)
    if BITS == 3:
        wb = _load_words(base + R * N, w_mask, EVEN_N)
        wc = _load_words(base + 2 * R * N, w_mask, EVEN_N)
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


@_jit
def _tile(M, N, num_blocks, blocks_per_split, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's output tile (grid: M tiles, N tiles, K splits): row and column offsets and masks, its
    K blocks ``[b_start, b_end)``, and the tile's number among the tiles (for the split-K counters)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    b_start = tl.program_id(2) * blocks_per_split
    b_end = tl.minimum(b_start + blocks_per_split, num_blocks)
    tile = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    return offs_m, offs_n, offs_m < M, offs_n < N, b_start, b_end, tile


@_jit
def _x_slice_t(x_ptr, offs_m, m_mask, kk, K, stride_xm, EVEN_K: tl.constexpr):
    """``x[offs_m, kk]ᵀ`` as an ``[R, BLOCK_M]`` tile, zero past M and (unless EVEN_K) past K."""
    if EVEN_K:
        k_mask = kk >= 0
    else:
        k_mask = kk < K
    return tl.load(x_ptr + offs_m[None, :] * stride_xm + kk[:, None], mask=m_mask[None, :] & k_mask[:, None], other=0)


@_jit
def _shifted_field(w, P: tl.constexpr, WIDTH: tl.constexpr, TOP: tl.constexpr, opaque_zero):
    """``(2**(23-pos) + field`` as float32, ``2**(23-pos)``) for the WIDTH-bit field at bit P of ``w``.

    The word is shifted so that the field at bit TOP (the top field of this field's chunk) ends at bit
    22; fields sharing a chunk share that shift. ``opaque_zero`` is 0 at run time: adding it keeps each
    exponent constant in a register, so the field costs one LOP3 (the compiler otherwise folds both
    constants into the instruction and rematerializes one of them for every field).
    """
    SHIFT: tl.constexpr = 23 - WIDTH - TOP
    POS: tl.constexpr = P + SHIFT
    if SHIFT > 0:
        src = w << SHIFT
    elif SHIFT < 0:
        src = w >> (-SHIFT)
    else:
        src = w
    v = (src & (((1 << WIDTH) - 1) << POS)) | (opaque_zero + ((150 - POS) << 23))
    return v.to(tl.float32, bitcast=True), (1 << (23 - POS)) * 1.0


@_jit
def _gemv_field(wa, wb, wc, J: tl.constexpr, BITS: tl.constexpr, opaque_zero):
    """``(magic + code, magic)`` of slice J, for :func:`gemv_kernel` (``magic`` is a power of two ≤ 512).

    Fields are grouped into chunks of 8 // BITS (W3: 3) so that, after one shift per chunk, every field
    sits in the top mantissa bits: the magic is then small enough to subtract after the dot product
    (no per-value FADD) without losing float32 precision.
    """
    if BITS == 3:
        JW: tl.constexpr = J % 10
        TOPJ: tl.constexpr = 9 if JW >= 9 else JW // 3 * 3 + 2
        if J < 10:
            v, magic = _shifted_field(wa, 3 * JW, 3, 3 * TOPJ, opaque_zero)
        elif J < 20:
            v, magic = _shifted_field(wb, 3 * JW, 3, 3 * TOPJ, opaque_zero)
        elif J < 30:
            v, magic = _shifted_field(wc, 3 * JW, 3, 3 * TOPJ, opaque_zero)
        elif J == 30:  # word A's bits 30-31 and word B's bit 30, placed at bits 20-22
            fld = ((wa >> 10) & (3 << 20)) | ((wb >> 8) & (4 << 20))
            v = (fld | (opaque_zero + (130 << 23))).to(tl.float32, bitcast=True)
            magic = 8.0
        else:  # word B's bit 31 and word C's bits 30-31
            fld = ((wb >> 11) & (1 << 20)) | ((wc >> 9) & (6 << 20))
            v = (fld | (opaque_zero + (130 << 23))).to(tl.float32, bitcast=True)
            magic = 8.0
    else:
        C: tl.constexpr = 8 // BITS
        v, magic = _shifted_field(wa, BITS * J, BITS, BITS * (J // C * C + C - 1), opaque_zero)
    return v, magic


@_jit
def _row_x(x_row, k, offs_r, K, EVEN_K: tl.constexpr):
    """float32 ``x[k + r]`` for the R rows of one slice (zero past K)."""
    return _load_words(x_row + k + offs_r, (k + offs_r) < K, EVEN_K).to(tl.float32)


@_jit
def _col_params(s_ptr, z_ptr, g, k, K, offs_s, s_mask, N, ZERO: tl.constexpr, EVEN_K: tl.constexpr,
                EVEN_N: tl.constexpr):
    """float32 scales and zero points of group ``g`` (which starts at ``k``; zero past K) in the word
    tile's layout; with one shared zero point the second value is just the scales again (unused)."""
    WHOLE: tl.constexpr = EVEN_K and EVEN_N
    if EVEN_K:
        mask = s_mask
    else:
        mask = s_mask & ((offs_s * 0 + k) < K)
    s = _load_words(s_ptr + g * N + offs_s, mask, WHOLE).to(tl.float32)
    zc = s
    if ZERO < 0:
        zc = _load_words(z_ptr + g * N + offs_s, mask, WHOLE).to(tl.float32)
    return s, zc


@_jit
def _as_rows(v, ROWS_OUTER: tl.constexpr):
    """An ``[R]`` vector along the row axis of the 3-D gemv tile."""
    if ROWS_OUTER:
        out = v[:, None, None]
    else:
        out = v[None, :, None]
    return out


@_jit
def _as_reps(v, ROWS_OUTER: tl.constexpr):
    """An ``[BLOCK_N / WARP_N]`` vector along the repeat axis of the 3-D gemv tile."""
    if ROWS_OUTER:
        out = v[None, :, None]
    else:
        out = v[:, None, None]
    return out


@_jit_runtime_ints
def gemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, out_ptr, part_ptr, cnt_ptr,
                M, N, K, stride_xm, stride_om, num_blocks, blocks_per_split, split_k, opaque_zero,
                BITS: tl.constexpr, R: tl.constexpr, GS: tl.constexpr, ZERO: tl.constexpr,
                HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr,
                PREFETCH: tl.constexpr, WARP_N: tl.constexpr, EVEN_N: tl.constexpr, ROWS_OUTER: tl.constexpr):
    """One activation row per program (axis 2); CUDA-core FMAs over 3-D word tiles of R rows, BLOCK_N / WARP_N
    repeats and WARP_N columns (rows first when ROWS_OUTER, see ``ROWS_OUTER`` above).

    Layout: WARP_N columns span the lanes of a warp (4 words per lane), the rest of the warp and the
    warps spread over the R rows, and BLOCK_N / WARP_N repeats give each thread more columns: with
    WARP_N = 32 and 4 warps a thread holds one row, so one x value serves all its columns.
    Per weight value: one LOP3 and one FMA, plus one shift per chunk (see ``_gemv_field``). Each
    segment (a group, or a K block) starts its partial sums at ``-sum x * (magic + zero)`` and is
    scaled when it ends. PREFETCH: load the next block's words before decoding this one.
    EVEN_K / EVEN_N: K is whole blocks / N is whole tiles (no masks).
    """
    NS: tl.constexpr = 32 if BITS == 3 else 32 // BITS
    ROWS: tl.constexpr = 3 * R if BITS == 3 else R
    BK: tl.constexpr = R * NS
    NREP: tl.constexpr = BLOCK_N // WARP_N
    SEG: tl.constexpr = GS // R if (GS > 0 and GS < BK) else NS  # slices per segment
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.program_id(2)
    offs_w = tl.arange(0, WARP_N)
    offs_r = tl.arange(0, R)
    tile_n = pid_n * BLOCK_N + _as_reps(tl.arange(0, NREP), ROWS_OUTER) * WARP_N
    offs_n = tile_n + offs_w[None, None, :]
    n_mask = offs_n < N
    # the same columns, written with contiguity 4 and broadcast over rows: 16-bit scale loads then get
    # the word tile's layout instead of a trip through shared memory
    offs_s = tile_n + ((offs_w // 4) * 4 + offs_w % 4)[None, None, :] + _as_rows(offs_r, ROWS_OUTER) * 0
    s_mask = offs_s < N
    x_row = x_ptr + m * stride_xm
    if ROWS_OUTER:
        acc = tl.zeros([R, NREP, WARP_N], dtype=tl.float32)
    else:
        acc = tl.zeros([NREP, R, WARP_N], dtype=tl.float32)
    if GS == 0:
        s, zc = _col_params(s_ptr, z_ptr, 0, 0, K, offs_s, s_mask, N, ZERO, EVEN_K, EVEN_N)
    b_start = pid_k * blocks_per_split
    b_end = tl.minimum(b_start + blocks_per_split, num_blocks)
    w_ptrs = (w_ptr + _as_rows(offs_r, ROWS_OUTER) * N + offs_n).to(tl.pointer_type(tl.uint32))
    if PREFETCH:
        wa, wb0, wc0 = _load_block(w_ptrs, b_start, N, n_mask, R, ROWS, BITS, EVEN_N)
        if BITS == 3:
            wb = wb0
            wc = wc0
    for b in range(b_start, b_end):
        k0 = b * BK
        if PREFETCH:
            na, nb, nc = _load_block(w_ptrs, tl.minimum(b + 1, b_end - 1), N, n_mask, R, ROWS, BITS, EVEN_N)
        else:
            wa, wb, wc = _load_block(w_ptrs, b, N, n_mask, R, ROWS, BITS, EVEN_N)
        if BITS != 3:
            wb = wa
            wc = wa
        for j in tl.static_range(NS):
            if j % SEG == 0:
                if GS != 0:
                    s, zc = _col_params(s_ptr, z_ptr, (k0 + j * R) // GS, k0 + j * R, K, offs_s, s_mask, N, ZERO,
                                        EVEN_K, EVEN_N)
                x_magic = tl.zeros([R], dtype=tl.float32)
                x_sum = tl.zeros([R], dtype=tl.float32)
                for jj in tl.static_range(j, j + SEG):  # the same x loads as below: the compiler merges them
                    xs = _row_x(x_row, k0 + jj * R, offs_r, K, EVEN_K)
                    _, magic = _gemv_field(wa, wb, wc, jj, BITS, opaque_zero)
                    x_magic += xs * magic
                    x_sum += xs
                if ZERO >= 0:
                    part = tl.zeros_like(acc) - _as_rows(x_magic + x_sum * ZERO, ROWS_OUTER)
                else:
                    part = -(_as_rows(x_magic, ROWS_OUTER) + _as_rows(x_sum, ROWS_OUTER) * zc)
            v, _ = _gemv_field(wa, wb, wc, j, BITS, opaque_zero)
            part += _as_rows(_row_x(x_row, k0 + j * R, offs_r, K, EVEN_K), ROWS_OUTER) * v
            if j % SEG == SEG - 1:
                if GS != 0:
                    acc += part * s
                else:
                    acc += part
        if PREFETCH:
            wa = na
            if BITS == 3:
                wb = nb
                wc = nc
    if GS == 0:
        acc = acc * s
    y = tl.reshape(tl.sum(acc, axis=0 if ROWS_OUTER else 1), [BLOCK_N])
    offs_m = m + tl.arange(0, 1)
    offs_y = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    _finish(y[None, :], offs_m, offs_y, M, N, b_ptr, out_ptr, stride_om, part_ptr, cnt_ptr,
            m * tl.num_programs(0) + pid_n, pid_k, split_k, HAS_BIAS, SPLIT)


@_jit_runtime_ints
def gemm_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, out_ptr, part_ptr, cnt_ptr,
                M, N, K, stride_xm, stride_om, num_blocks, blocks_per_split, split_k, opaque_zero,
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
    offs_m, offs_n, m_mask, n_mask, b_start, b_end, tile = _tile(M, N, num_blocks, blocks_per_split, BLOCK_M, BLOCK_N)
    offs_r = tl.arange(0, R)
    if W_FIRST:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if GS == 0:
        s, zc = _group_params(s_ptr, z_ptr, 0, 0, offs_n, n_mask, N, K, ZERO, BLOCK_N, EVEN_K)
    else:
        # each group's scales (and zero points) are loaded one group ahead (as in gemm16_kernel)
        g_next = _first_group(b_start, K, GS, BK)
        s_next, zc_next = _group_params(s_ptr, z_ptr, g_next, g_next * GS, offs_n, n_mask, N, K, ZERO, BLOCK_N,
                                        EVEN_K)
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
                    s = s_next
                    zc = zc_next
                    g_next = _next_group(kj, K, GS, BK)
                    s_next, zc_next = _group_params(s_ptr, z_ptr, g_next, g_next * GS, offs_n, n_mask, N, K, ZERO,
                                                    BLOCK_N, EVEN_K)
            kk = kj + offs_r
            if W_FIRST:
                xj = _x_slice_t(x_ptr, offs_m, m_mask, kk, K, stride_xm, EVEN_K)
                q = _decode(wa, wb, wc, zc[:, None], j, BITS, opaque_zero)
                if SCALE_AFTER:
                    if GS != 0:
                        accg = _mma(q, xj, accg, dt, F32_DOT)
                    else:
                        acc = _mma(q, xj, acc, dt, F32_DOT)
                else:
                    acc = _mma(q * s[:, None], xj, acc, dt, F32_DOT)
            else:
                if EVEN_K:
                    k_mask = kk >= 0
                else:
                    k_mask = kk < K
                xj = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :],
                             mask=m_mask[:, None] & k_mask[None, :], other=0)
                q = _decode(wa, wb, wc, zc[None, :], j, BITS, opaque_zero)
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
    _finish(y, offs_m, offs_n, M, N, b_ptr, out_ptr, stride_om, part_ptr, cnt_ptr, tile, tl.program_id(2), split_k,
            HAS_BIAS, SPLIT)


# One 32-bit shift by SH for two int16 lanes, indexed by SH.
_SHR32: tl.constexpr = tl.constexpr(tuple(f"shr.b32 $0, $1, {sh};" for sh in range(16)))
_SHL32: tl.constexpr = tl.constexpr(tuple(f"shl.b32 $0, $1, {sh};" for sh in range(16)))


@_jit
def _shr16(h, SH: tl.constexpr, ASM: tl.constexpr):
    """``h >> SH`` on int16 lanes. ASM: one 32-bit shift per two lanes (the bits that cross into the low lane
    are masked off by the caller); compiled from Triton the shift costs a mask, a shift and a re-pack per lane."""
    if SH == 0:
        return h
    if not ASM:
        return h >> tl.full(h.shape, SH, tl.int16)
    return tl.inline_asm_elementwise(_SHR32[SH], "=r,r", [h], dtype=tl.int16, is_pure=True, pack=2)


@_jit
def _shl16(h, SH: tl.constexpr, ASM: tl.constexpr):
    """``h << SH`` on int16 lanes (ASM: as :func:`_shr16`; the bits that cross into the high lane are masked
    off by the caller)."""
    if not ASM:
        return h << tl.full(h.shape, SH, tl.int16)
    return tl.inline_asm_elementwise(_SHL32[SH], "=r,r", [h], dtype=tl.int16, is_pure=True, pack=2)


@_jit
def _bits16(h, SH: tl.constexpr, MASK: tl.constexpr, ASM: tl.constexpr):
    """``(h >> SH) & MASK`` on int16 lanes."""
    return _shr16(h, SH, ASM) & tl.full(h.shape, MASK, tl.int16)


# 128.0 (bf16) and 1024.0 (fp16) in both 16-bit lanes: a code OR-ed into the mantissa adds itself exactly
MAGIC_BF16X2 = 0x43004300
MAGIC_F16X2 = 0x64006400


def magic_field_ptx(sh: int, mask: int, magic: int, dst: str, src: str) -> str:
    """PTX for ``dst = ((src >> sh) & mask·0x10001) | magic`` on two 16-bit lanes of one 32-bit register: one
    shift and one LOP3 (LUT 0xea is ``(a & b) | c``). A shift goes through a scratch ``t`` the caller declares
    (``.reg .b32 t``). Shared by gemm16's decode and the Gluon kernel's (``wgmma_gemm``)."""
    lop = f"lop3.b32 {dst}, %s, {mask * 0x10001}, {magic}, 0xea;"
    return f"shr.b32 t, {src}, {sh}; {lop % 't'}" if sh else lop % src


def _magic16_asm(sh: int, mask: int, magic: int) -> str:
    """PTX for ``$0 = ((($1 >> sh) & mask) | magic`` on two 16-bit lanes (:func:`magic_field_ptx`)."""
    return f"{{ .reg .b32 t; {magic_field_ptx(sh, mask, magic, '$0', '$1')} }}"


# (h >> SH) & MASK OR-ed under the exponent of the magic 128.0 (bf16) / 1024.0 (fp16), two int16 lanes per
# 32-bit shift and LOP3; indexed by 256 * is_fp16 + 16 * SH + MASK.
_MAGIC16: tl.constexpr = tl.constexpr(tuple(_magic16_asm(sh, mask, magic) for magic in (MAGIC_BF16X2, MAGIC_F16X2)
                                            for sh in range(16) for mask in range(16)))


@_jit
def _magic16(h, SH: tl.constexpr, MASK: tl.constexpr, dt: tl.constexpr):
    """``magic + ((h >> SH) & MASK)`` as ``dt`` for int16 lanes ``h`` (MASK < 16), two lanes per 32-bit shift
    and LOP3; compiled only (the interpreter runs no PTX)."""
    if dt == tl.bfloat16:
        q = tl.inline_asm_elementwise(_MAGIC16[16 * SH + MASK], "=r,r", [h], dtype=tl.bfloat16, is_pure=True, pack=2)
    else:
        q = tl.inline_asm_elementwise(_MAGIC16[256 + 16 * SH + MASK], "=r,r", [h], dtype=tl.float16, is_pure=True,
                                      pack=2)
    return q


@_jit
def _code16(f, ZERO: tl.constexpr, dt: tl.constexpr, INTERPRETED: tl.constexpr):
    """``f - ZERO`` in ``dt`` (exact) for small non-negative int16 codes ``f``.

    The code is OR-ed under the exponent of a power of two whose spacing is 1 (bf16: 128, fp16: 1024), so
    integer ops, a bitcast and a subtraction of a constant are all it takes. The interpreter's int16-to-float
    bitcast is wrong, so there the same value comes from an int-to-float conversion.
    """
    if INTERPRETED:
        return (f.to(tl.float32) - ZERO).to(dt)
    if dt == tl.bfloat16:
        q = (f | tl.full(f.shape, 0x4300, tl.int16)).to(tl.bfloat16, bitcast=True) - (128.0 + ZERO)
    else:
        q = (f | tl.full(f.shape, 0x6400, tl.int16)).to(tl.float16, bitcast=True) - (1024.0 + ZERO)
    return q


@_jit
def _decode16(h, SH: tl.constexpr, BITS: tl.constexpr, ZERO: tl.constexpr, dt: tl.constexpr,
              INTERPRETED: tl.constexpr):
    """``code - ZERO`` in ``dt`` for the BITS-bit field at bit SH of each 16-bit lane of ``h``.

    Nothing but integer ops (inline PTX), a bitcast and a constant subtraction lie between the load of ``h``
    and the MMA, so Triton moves the conversion to the MMA's register layout up to that load.
    """
    if INTERPRETED:
        q = _code16(_bits16(h, SH, (1 << BITS) - 1, False), ZERO, dt, INTERPRETED)
    else:
        q = _magic16(h, SH, (1 << BITS) - 1, dt) - ((128.0 if dt == tl.bfloat16 else 1024.0) + ZERO)
    return q


@_jit
def _decode16_w3(la, ha, lb, hb, lc, hc, J: tl.constexpr, ZERO: tl.constexpr, dt: tl.constexpr,
                 INTERPRETED: tl.constexpr):
    """3-bit slice J from the low/high 16-bit halves of a block's word tiles A, B, C (as :func:`_decode`:
    fields 0-9 of A, then B, then C, at bit 3·j; slices 30 and 31 gather the words' top bits). Field 5 of a
    word straddles its halves."""
    ASM: tl.constexpr = not INTERPRETED
    if J < 30:
        T: tl.constexpr = J // 10
        F: tl.constexpr = J % 10
        if T == 0:
            lo = la
            hi = ha
        elif T == 1:
            lo = lb
            hi = hb
        else:
            lo = lc
            hi = hc
        if F < 5:
            q = _decode16(lo, 3 * F, 3, ZERO, dt, INTERPRETED)
        elif F == 5:
            f = _bits16(lo, 15, 1, ASM) | (_shl16(hi, 1, ASM) & tl.full(hi.shape, 6, tl.int16))
            q = _code16(f, ZERO, dt, INTERPRETED)
        else:
            q = _decode16(hi, 3 * F - 16, 3, ZERO, dt, INTERPRETED)
    elif J == 30:
        q = _code16(_bits16(ha, 14, 3, ASM) | _bits16(hb, 12, 4, ASM), ZERO, dt, INTERPRETED)
    else:
        q = _code16(_bits16(hb, 15, 1, ASM) | _bits16(hc, 13, 6, ASM), ZERO, dt, INTERPRETED)
    return q


@_jit
def _x_row_sums(x_ptr, offs_m, m_mask, k0, WIDTH: tl.constexpr, K, stride_xm, EVEN_K: tl.constexpr):
    """float32 ``sum(x[offs_m, k0:k0+WIDTH])`` per row (zero past K): what an asym group's zero point
    multiplies, so gemm16 can decode every code against one constant and subtract the rest per group."""
    kk = k0 + tl.arange(0, WIDTH)
    mask = m_mask[:, None]
    if not EVEN_K:
        mask = mask & (kk < K)[None, :]
    xs = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :], mask=mask, other=0)
    return tl.sum(xs.to(tl.float32), axis=1)


@_jit_runtime_ints
def gemm16_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, out_ptr, part_ptr, cnt_ptr,
                  M, N, K, stride_xm, stride_om, num_blocks, blocks_per_split, split_k,
                  BITS: tl.constexpr, R: tl.constexpr, GS: tl.constexpr, ZERO: tl.constexpr,
                  HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
                  EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, INTERPRETED: tl.constexpr):
    """Weight-first tensor-core tiles (``accᵀ = W · xᵀ``) with the weight operand kept in registers.

    Each K block's int32 word tile (3 bits: three tiles) is split into its low and high 16-bit halves, and
    the codes are decoded from 16-bit lanes by :func:`_decode16` (3 bits: :func:`_decode16_w3`). Integer ops
    only up to the MMA operand, so Triton converts the loaded word tile itself to the MMA's register layout
    (the words cross shared memory once, where ``gemm_kernel`` sends every decoded slice through it), and as
    32-bit loads that feed an MMA the words are pipelined with cp.async (16-bit loads cannot be). Bits 2, 3
    and 4. The decode subtracts one constant zero point (ZERO, or the middle code when ZERO < 0): a per-group
    zero point broadcast into the weight tile would stop that conversion from moving. With per-group zero
    points z (asym, ZERO < 0) each group's sum is corrected instead: ``Σ(q − z)·x = Σ(q − c)·x − (z − c)·Σx``,
    with ``Σx`` the group's activation row sums (:func:`_x_row_sums`).
    """
    ASYM: tl.constexpr = ZERO < 0
    ZD: tl.constexpr = (1 << (BITS - 1)) if ASYM else ZERO
    NS: tl.constexpr = 32 if BITS == 3 else 32 // BITS
    ROWS: tl.constexpr = 3 * R if BITS == 3 else R
    PER_HALF: tl.constexpr = 16 // BITS
    BK: tl.constexpr = R * NS
    # the K values one group covers in one block: a group wider than the block (or per channel) is summed and
    # corrected block by block, like its scales
    SEG: tl.constexpr = GS if (GS > 0 and GS < BK) else BK
    dt = x_ptr.dtype.element_ty
    offs_m, offs_n, m_mask, n_mask, b_start, b_end, tile = _tile(M, N, num_blocks, blocks_per_split, BLOCK_M, BLOCK_N)
    offs_r = tl.arange(0, R)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    accg = tl.zeros_like(acc)
    xsum = tl.zeros([BLOCK_M], dtype=tl.float32)
    if GS == 0:
        s, zc = _group_params(s_ptr, z_ptr, 0, 0, offs_n, n_mask, N, K, ZERO, BLOCK_N, EVEN_K)
    else:
        # a group's scales (and zero points) are loaded while the group before it is decoded: too small for
        # cp.async, they would otherwise wait for DRAM at every group's start
        g_next = _first_group(b_start, K, GS, BK)
        s_next, zc_next = _group_params(s_ptr, z_ptr, g_next, g_next * GS, offs_n, n_mask, N, K, ZERO, BLOCK_N,
                                        EVEN_K)
    w_ptrs = w_ptr + offs_r[None, :] * N + offs_n[:, None]
    w_mask = n_mask[:, None]
    for b in range(b_start, b_end):
        k0 = b * BK
        if ASYM and GS == 0:
            xsum += _x_row_sums(x_ptr, offs_m, m_mask, k0, SEG, K, stride_xm, EVEN_K)
        wa, wb, wc = _load_block(w_ptrs, b, N, w_mask, R, ROWS, BITS, EVEN_N)
        lo = wa.to(tl.int16)
        hi = (wa >> 16).to(tl.int16)
        if BITS == 3:
            lb = wb.to(tl.int16)
            hb = (wb >> 16).to(tl.int16)
            lc = wc.to(tl.int16)
            hc = (wc >> 16).to(tl.int16)
        for j in tl.static_range(NS):
            kj = k0 + j * R
            if GS != 0:
                if (j * R) % GS == 0:
                    s = s_next
                    zc = zc_next
                    g_next = _next_group(kj, K, GS, BK)
                    s_next, zc_next = _group_params(s_ptr, z_ptr, g_next, g_next * GS, offs_n, n_mask, N, K, ZERO,
                                                    BLOCK_N, EVEN_K)
                    if ASYM:
                        xsum = _x_row_sums(x_ptr, offs_m, m_mask, kj, SEG, K, stride_xm, EVEN_K)
            xj = _x_slice_t(x_ptr, offs_m, m_mask, kj + offs_r, K, stride_xm, EVEN_K)
            if BITS == 3:
                q = _decode16_w3(lo, hi, lb, hb, lc, hc, j, ZD, dt, INTERPRETED)
            elif j < PER_HALF:
                q = _decode16(lo, j * BITS, BITS, ZD, dt, INTERPRETED)
            else:
                q = _decode16(hi, (j - PER_HALF) * BITS, BITS, ZD, dt, INTERPRETED)
            accg = _mma(q, xj, accg, dt, INTERPRETED)
            if GS != 0:
                if ((j + 1) * R) % GS == 0 or j == NS - 1:
                    if ASYM:
                        accg -= (zc - ZD)[:, None] * xsum[None, :]
                    acc += accg * s[:, None]
                    accg = tl.zeros_like(acc)
    if GS == 0:
        if ASYM:
            accg -= (zc - ZD)[:, None] * xsum[None, :]
        acc = accg * s[:, None]
    _finish(tl.trans(acc), offs_m, offs_n, M, N, b_ptr, out_ptr, stride_om, part_ptr, cnt_ptr, tile, tl.program_id(2),
            split_k, HAS_BIAS, SPLIT)


@_jit_runtime_ints
def dequant_kernel(w_ptr, s_ptr, z_ptr, out_ptr, N, K, opaque_zero,
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
        q = _decode(wa, wb, wc, zc[None, :], j, BITS, opaque_zero)
        kk = kj + offs_r
        tl.store(out_ptr + kk[:, None] * N + offs_n[None, :], (q * s[None, :]).to(out_ptr.dtype.element_ty),
                 mask=(kk < K)[:, None] & n_mask[None, :])


@_jit_runtime_ints
def sum_partials_kernel(part_ptr, b_ptr, out_ptr, M, N, stride_om, split_k,
                        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``out = Σ_s part[s] (+ bias)`` in out's dtype, for split-K partials a kernel left behind (float32
    ``[split_k, M, N]``): one pass over them, where torch's sum, bias add and cast took two or three."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    part_ptrs = part_ptr + offs_m[:, None] * N + offs_n[None, :]
    total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in range(split_k):
        total += tl.load(part_ptrs + s * M * N, mask=mask, other=0)
    if HAS_BIAS:
        total += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], total.to(out_ptr.dtype.element_ty), mask=mask)
