"""Decode-path (M ≤ 4) dequant-GEMV for Hopper in Gluon: the weight stream arrives by TMA into a ring.

Why: the Triton gemv (``triton_kernels.gemv_kernel``) loads each word tile into registers, one block
ahead at most, so its memory latency is covered only by the programs sharing an SM; on the H200 it
streamed 2.1 TB/s against a 4.8 TB/s HBM, and W2 (half the bytes) ran no faster than W4
(docs/kernels.md). Here a ring of STAGES shared-memory stages, filled by TMA, keeps several blocks of
words — with their x slices and group scales — in flight per program while the threads decode from
shared memory, whose latency is short. Measured on the H200 (docs/kernels.md, "A gemv fed by TMA"): faster
for 2-bit, narrow groups and the largest layer (up to 1.36x), slower for W4 g128 on smaller layers, which
is issue-bound rather than waiting on memory; hence the M=1 default for 2 bits and a tuner candidate else.

Per weight value the arithmetic is the Triton gemv's: one LOP3 puts the field under a float32 exponent
(``magic + code`` exactly, see :func:`_field`) and one FFMA accumulates it; a segment's magic and zero
point are taken off once per row, ``Σ x·(magic + zero)``, before its scale is applied.

Needs: Gluon, sm_90, bits 2/4/8, K a whole number of blocks (x comes through a flat ``[·, 16]`` view, so
nothing past K may be read as zero by accident), N a multiple of 8 (16 with 8-bit zero points, whose
stage rows must also fill 128 bytes), x's row stride a multiple of 16 elements. ``supported()`` says
whether a call can use it; the launcher falls back to the Triton gemv otherwise.
"""

from __future__ import annotations

import functools

import torch

from vllm_autoround.kernels.gluon_api import (
    HAVE_GLUON,
    TensorDescriptor,
    gl,
    gluon,
    is_hopper,
    mbarrier,
    reinterpret,
    thread_barrier,
    tma_load,
)
from vllm_autoround.kernels.layout import INTERLEAVE, block_k, slices_per_block
from vllm_autoround.kernels.triton_kernels import _gemv_field

BITS_SUPPORTED = (2, 4, 8)

if HAVE_GLUON:
    from vllm_autoround.kernels.wgmma_gemm import store_tile

    R = gl.constexpr(INTERLEAVE)

    @gluon.jit
    def _field(w, J: gl.constexpr, BITS: gl.constexpr, opaque_zero):
        """``(magic + code, magic)`` of slice J: the Triton gemv's decode (``triton_kernels._gemv_field``)."""
        return _gemv_field(w, w, w, J, BITS, opaque_zero)

    @gluon.jit
    def _issue(w_desc, x_desc, s_desc, z_desc, w_smem, x_smem, s_smem, z_smem, bar, b, st, off_n, x_row,
               NS: gl.constexpr, GS: gl.constexpr, SG: gl.constexpr, ZERO: gl.constexpr):
        """TMA loads of block b (words, x slices, and the group scales / zero points it uses) into stage st."""
        BK: gl.constexpr = R * NS
        S_BYTES: gl.constexpr = s_desc.block_type.nbytes if GS > 0 else 0
        Z_BYTES: gl.constexpr = z_desc.block_type.nbytes if (GS > 0 and ZERO < 0) else 0
        mbarrier.expect(bar, w_desc.block_type.nbytes + x_desc.block_type.nbytes + S_BYTES + Z_BYTES)
        tma_load(w_desc, [b * R, off_n], bar, w_smem.index(st))
        tma_load(x_desc, [x_row + b * NS, 0], bar, x_smem.index(st))
        if GS > 0:
            if GS < BK:
                g = b * SG
            else:
                g = b * BK // GS
            tma_load(s_desc, [g, off_n], bar, s_smem.index(st))
            if ZERO < 0:
                tma_load(z_desc, [g, off_n], bar, z_smem.index(st))

    @gluon.jit(do_not_specialize=["M", "blocks_per_split", "split_k", "opaque_zero"])
    def tma_gemv_kernel(w_desc, x_desc, s_desc, z_desc, s_ptr, z_ptr, b_ptr, out_ptr, part_ptr, cnt_ptr,
                        M, N, stride_xm, stride_om, num_blocks, blocks_per_split, split_k, opaque_zero,
                        BITS: gl.constexpr, GS: gl.constexpr, ZERO: gl.constexpr, HAS_BIAS: gl.constexpr,
                        SPLIT: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
        """``out[m, :] = x[m, :] · dequant(W)ᵀ (+ bias)``; grid (N tiles, K splits, M).

        Threads tile ``[R rows, BLOCK_N]`` words as 4 lanes × up to 4 warps over the rows and 8 lanes × 4
        words over the columns, so with 4 warps one x value serves all of a thread's columns. With SPLIT
        each split stores float32 partials; the last to arrive at a tile (atomic counter) sums them.
        """
        NS: gl.constexpr = 32 // BITS
        BK: gl.constexpr = R * NS
        SEG: gl.constexpr = GS // R if (GS > 0 and GS < BK) else NS  # slices per scale segment
        SG: gl.constexpr = BK // GS if (GS > 0 and GS < BK) else 1  # scale rows per stage
        WR: gl.constexpr = num_warps if num_warps < 4 else 4
        layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 4], threads_per_warp=[4, 8],
                                                warps_per_cta=[WR, num_warps // WR], order=[1, 0])
        rows_l: gl.constexpr = gl.SliceLayout(1, layout)
        cols_l: gl.constexpr = gl.SliceLayout(0, layout)
        pid_n = gl.program_id(0)
        pid_k = gl.program_id(1)
        m = gl.program_id(2)
        off_n = pid_n * BLOCK_N
        b_start = pid_k * blocks_per_split
        nb = gl.minimum(blocks_per_split, num_blocks - b_start)
        x_row = m * (stride_xm // R)

        w_smem = gl.allocate_shared_memory(gl.int32, [STAGES, R, BLOCK_N], w_desc.layout)
        x_smem = gl.allocate_shared_memory(x_desc.dtype, [STAGES, NS, R], x_desc.layout)
        s_smem = gl.allocate_shared_memory(s_desc.dtype, [STAGES, SG, BLOCK_N], s_desc.layout)
        z_smem = gl.allocate_shared_memory(z_desc.dtype, [STAGES, SG, BLOCK_N], z_desc.layout)
        # the same (unswizzled) bytes as rows of vectors: one x slice, or one group's scales, per row
        vectors: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0])
        x_slices = reinterpret(x_smem, x_desc.dtype, [STAGES * NS, R], vectors)
        s_rows = reinterpret(s_smem, s_desc.dtype, [STAGES * SG, BLOCK_N], vectors)
        z_rows = reinterpret(z_smem, z_desc.dtype, [STAGES * SG, BLOCK_N], vectors)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for p in gl.static_range(STAGES):
            mbarrier.init(ready.index(p), count=1)
        for p in gl.static_range(STAGES):
            if p < nb:
                _issue(w_desc, x_desc, s_desc, z_desc, w_smem, x_smem, s_smem, z_smem, ready.index(p),
                       b_start + p, p, off_n, x_row, NS, GS, SG, ZERO)

        offs_n = off_n + gl.arange(0, BLOCK_N, layout=cols_l)
        n_mask = offs_n < N
        if GS <= 0:  # one group: its scales once, applied to the sum at the end
            s_all = gl.load(s_ptr + offs_n, mask=n_mask, other=0).to(gl.float32)
            if ZERO < 0:
                zc = gl.expand_dims(gl.load(z_ptr + offs_n, mask=n_mask, other=0).to(gl.float32), 0)
        acc = gl.zeros([R, BLOCK_N], gl.float32, layout)
        for i in range(nb):
            st = i % STAGES
            mbarrier.wait(ready.index(st), (i // STAGES) & 1)
            words = w_smem.index(st).load(layout)
            for j in gl.static_range(NS):
                xs = gl.expand_dims(x_slices.index(st * NS + j).load(rows_l).to(gl.float32), 1)
                v, magic = _field(words, j, BITS, opaque_zero)
                if j % SEG == 0:
                    part = xs * v
                    x_magic = xs * magic
                    x_sum = xs
                else:
                    part += xs * v
                    x_magic += xs * magic
                    x_sum += xs
                if j % SEG == SEG - 1:
                    if GS > 0:
                        s = gl.expand_dims(s_rows.index(st * SG + (j // SEG) % SG).load(cols_l).to(gl.float32), 0)
                        if ZERO < 0:
                            zc = gl.expand_dims(
                                z_rows.index(st * SG + (j // SEG) % SG).load(cols_l).to(gl.float32), 0)
                    if ZERO < 0:
                        part = part - x_magic - x_sum * zc
                    else:
                        part = part - (x_magic + x_sum * ZERO)
                    if GS > 0:
                        acc += part * s
                    else:
                        acc += part
            # every warp has read stage st: it takes the block STAGES ahead
            thread_barrier()
            if i + STAGES < nb:
                _issue(w_desc, x_desc, s_desc, z_desc, w_smem, x_smem, s_smem, z_smem, ready.index(st),
                       b_start + i + STAGES, st, off_n, x_row, NS, GS, SG, ZERO)
        for p in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(p))

        y = gl.sum(acc, axis=0)
        if GS <= 0:
            y = y * s_all
        store_tile(y, out_ptr + m * stride_om + offs_n, part_ptr + m * N + offs_n, n_mask, b_ptr + offs_n, M * N,
                    cnt_ptr, m * gl.num_programs(0) + pid_n, pid_k, split_k, HAS_BIAS, SPLIT, True)

def supported(x: torch.Tensor, bits: int, group_size: int, in_features: int, out_features: int,
              zeros: torch.Tensor | None = None, block_n: int = 128) -> bool:
    """Whether :func:`tma_gemv` can take this call (see the module docstring for why each condition).

    zeros: the per-group zero points, if any; each stage's rows of them must fill the 128 bytes a TMA
    destination is aligned to (8-bit zero points: 128 columns, or more groups per block).
    """
    if not HAVE_GLUON or bits not in BITS_SUPPORTED or x.device.type != "cuda":
        return False
    bk = block_k(bits)
    if in_features % bk or (group_size > 0 and bk % group_size and group_size % bk):
        return False
    scale_rows = _scale_rows(bits, group_size)
    for t in (zeros,) if zeros is not None and zeros.numel() else ():
        if out_features * t.element_size() % 16 or scale_rows * block_n * t.element_size() % 128:
            return False
    if out_features % 8 or x.dtype not in (torch.bfloat16, torch.float16) or x.dim() != 2:
        return False
    if x.stride(1) != 1 or x.stride(0) % INTERLEAVE or x.data_ptr() % 16:
        return False
    return is_hopper(x.device.index or 0)


def _scale_rows(bits: int, group_size: int) -> int:
    """Rows of scales (and zero points) one K block uses: its groups, or the one group it lies in."""
    bk = block_k(bits)
    return bk // group_size if 0 < group_size < bk else 1


@functools.cache
def plain_layout(bitwidth: int):
    """Unswizzled shared memory: rows as in global memory, so the threads' loads need no address math."""
    return gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=bitwidth, rank=2)


def _descriptor(t: torch.Tensor, block: list[int]) -> TensorDescriptor:
    """A TMA descriptor of a row-major 2-D tensor; a single row's stride is whatever torch left there (per-channel
    zero points come as ``[1, N]`` with stride 1), so it is given as N."""
    strides = [t.shape[1] if t.shape[0] == 1 else t.stride(0), 1]
    return TensorDescriptor(t, list(t.shape), strides, block, plain_layout(t.element_size() * 8))


def tma_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
             bias: torch.Tensor | None, out: torch.Tensor, counters: torch.Tensor, *, bits: int, group_size: int,
             zero_point: int, in_features: int, block_n: int = 128, stages: int = 4, num_warps: int = 4,
             split_k: int = 1) -> torch.Tensor:
    """``out = x · dequant(W)ᵀ (+ bias)`` on the repacked weight (kernels.layout); see :func:`supported`.

    group_size: 0 when one group spans K. split_k > 1 splits the K blocks over that many programs per
    tile; ``counters`` (zero, one per tile) elects the split that sums them, and is left zero.
    """
    m, n = x.shape[0], qweight.shape[1]
    ns = slices_per_block(bits)
    bk = block_k(bits)
    num_blocks = in_features // bk
    per = -(-num_blocks // max(1, min(split_k, num_blocks)))
    split = -(-num_blocks // per)
    n_tiles = -(-n // block_n)
    if split > 1 and n_tiles * m > counters.numel():
        raise ValueError(f"tma_gemv: {n_tiles * m} tiles need more split-K counters than the {counters.numel()} given")
    x_rows = ((m - 1) * x.stride(0) + in_features) // INTERLEAVE
    x_flat = x.as_strided((x_rows, INTERLEAVE), (INTERLEAVE, 1))
    scale_rows = _scale_rows(bits, group_size)
    w_desc = _descriptor(qweight, [INTERLEAVE, block_n])
    x_desc = _descriptor(x_flat, [ns, INTERLEAVE])
    s_desc = _descriptor(scales, [scale_rows, block_n])
    z_desc = _descriptor(zeros, [scale_rows, block_n]) if zero_point < 0 else s_desc
    part = torch.empty(split, m, n, device=x.device, dtype=torch.float32) if split > 1 else out
    tma_gemv_kernel[(n_tiles, split, m)](
        w_desc, x_desc, s_desc, z_desc, scales, zeros if zero_point < 0 else scales,
        bias if bias is not None else out, out, part, counters, m, n, x.stride(0), out.stride(0), num_blocks, per,
        split, 0, BITS=bits, GS=group_size, ZERO=zero_point, HAS_BIAS=bias is not None, SPLIT=split > 1,
        BLOCK_N=block_n, STAGES=stages, num_warps=num_warps)
    return out
