"""The kernel-side weight layout: a one-time repack of checkpoint tensors at load time.

Why a repack: the checkpoint (GPTQ order, see :mod:`vllm_autoround.format`) packs *consecutive* K
values into one int32 word and lets 3-bit values straddle words. The kernels want the opposite:
every bit field of a word to feed a different, contiguous ``[R, N]`` slice of the weight, so that one
loaded ``[R, BLOCK_N]`` word tile yields ``32/bits`` whole tiles of codes with a mask-and-convert each.

Layout (``R = INTERLEAVE = 16`` rows, ``NS`` slices per block, ``BK = R * NS`` K values per block):

* bits 2, 4, 8: ``NS = 32 / bits``. Block ``b`` owns word rows ``[b*R, (b+1)*R)``; code
  ``k = b*BK + j*R + r`` sits in word row ``b*R + r`` at bit ``j*bits``.
* bits 3: ``NS = 32`` (``BK = 512``), three words A, B, C per (block, r): rows ``b*3R + {0,1,2}*R + r``.
  Slices 0-9, 10-19, 20-29 sit in A, B, C at bit ``3*(j mod 10)``; the 6 bits of slices 30 and 31 fill
  the top two bits of each word: A[30:32] = s30[0:2], B[30] = s30[2], B[31] = s31[0], C[30:32] = s31[1:3].

K is zero-padded up to a multiple of ``BK`` (padded codes meet zero activations). Scales stay as
stored (``[G, N]``); zero points become ``zero_point`` (one int for the whole tensor, the usual
symmetric case) or a ``zeros`` tensor of true zero points (uint8, int16 if one exceeds 255).
``counters`` is a small zeroed int32 buffer the split-K kernels borrow and hand back zeroed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch

from vllm_autoround.format.errors import FormatError
from vllm_autoround.format.packing import check_bits, unpack_cols, unpack_rows

INTERLEAVE = 16
PER_CHANNEL = -1
_MASK32 = 0xFFFFFFFF
# Columns repacked at a time: bounds the int64 temporaries on the device (K * chunk * 8 bytes each).
_REPACK_CHUNK_N = 2048


def slices_per_block(bits: int) -> int:
    return 32 if bits == 3 else 32 // bits


def block_k(bits: int, interleave: int = INTERLEAVE) -> int:
    """K values covered by one block of the repacked layout."""
    return interleave * slices_per_block(bits)


def padded_k(in_features: int, bits: int, interleave: int = INTERLEAVE) -> int:
    bk = block_k(bits, interleave)
    return -(-in_features // bk) * bk


def counters_size(out_features: int) -> int:
    """Split-K tile semaphores reserved per layer: enough for every tiling the launchers pick."""
    return 4 * -(-out_features // 16)


@dataclass
class PreparedWeight:
    """A quantized linear weight in the kernels' layout; plain tensors plus ints.

    Store ``tensors()`` on a module (parameters or buffers) and ``meta()`` anywhere; rebuild with
    ``PreparedWeight.from_tensors(tensors, **meta)``.
    """

    qweight: torch.Tensor  # int32 [padded_k * bits / 32, N], repacked (module docstring)
    scales: torch.Tensor  # [G, N] as stored (float16 in checkpoints)
    zeros: torch.Tensor  # uint8/int16 [G, N] true zero points, or empty when zero_point >= 0
    counters: torch.Tensor  # int32, zero between calls
    bias: torch.Tensor | None
    bits: int
    group_size: int  # as in the checkpoint: -1 = per channel
    in_features: int
    out_features: int
    zero_point: int  # the zero point shared by every group, or -1 when ``zeros`` holds them
    interleave: int = INTERLEAVE

    @property
    def padded_in_features(self) -> int:
        return padded_k(self.in_features, self.bits, self.interleave)

    @property
    def effective_group_size(self) -> int:
        return self.in_features if self.group_size == PER_CHANNEL else self.group_size

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    @classmethod
    def tensor_names(cls) -> tuple[str, ...]:
        """Names of the tensors every prepared weight has (``tensors()`` adds "bias" when one was given)."""
        return ("qweight", "scales", "zeros", "counters")

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {name: getattr(self, name) for name in self.tensor_names()}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def meta(self) -> dict[str, int]:
        tensor_names = {*self.tensor_names(), "bias"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in tensor_names}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, int] | None = None,
                     **kw: int) -> PreparedWeight:
        """Rebuild from ``tensors()`` and ``meta()`` (as a mapping or keyword arguments)."""
        missing = set(cls.tensor_names()) - set(tensors)
        if missing:
            raise FormatError(f"PreparedWeight.from_tensors: missing tensors {sorted(missing)}")
        return cls(**{name: tensors[name] for name in cls.tensor_names()}, bias=tensors.get("bias"),
                   **{**(meta or {}), **kw})


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    words = words & _MASK32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _pack_block_words(codes: torch.Tensor, bits: int, interleave: int) -> torch.Tensor:
    """Codes ``[KP, n]`` (int64, KP a multiple of the block) to repacked int32 words."""
    kp, n = codes.shape
    ns = slices_per_block(bits)
    c = codes.view(kp // (interleave * ns), ns, interleave, n)  # [block, slice, r, n]
    if bits != 3:
        words = torch.zeros(c.shape[0], interleave, n, dtype=torch.int64, device=codes.device)
        for j in range(ns):
            words |= c[:, j] << (j * bits)
        return _to_int32(words.reshape(-1, n))
    abc = torch.zeros(c.shape[0], 3, interleave, n, dtype=torch.int64, device=codes.device)
    for j in range(30):
        abc[:, j // 10] |= c[:, j] << (3 * (j % 10))
    s30, s31 = c[:, 30], c[:, 31]
    abc[:, 0] |= (s30 & 3) << 30
    abc[:, 1] |= ((s30 >> 2) & 1) << 30
    abc[:, 1] |= (s31 & 1) << 31
    abc[:, 2] |= ((s31 >> 1) & 3) << 30
    return _to_int32(abc.reshape(-1, n))


def repack_codes(codes: torch.Tensor, bits: int, interleave: int = INTERLEAVE) -> torch.Tensor:
    """Integer codes ``[K, N]`` to the repacked int32 ``qweight`` (K zero-padded to the block)."""
    check_bits(bits)
    k, n = codes.shape
    kp = padded_k(k, bits, interleave)
    out = []
    for start in range(0, n, _REPACK_CHUNK_N):
        chunk = codes[:, start:start + _REPACK_CHUNK_N].to(torch.int64)
        if kp != k:
            chunk = torch.cat([chunk, chunk.new_zeros(kp - k, chunk.shape[1])])
        out.append(_pack_block_words(chunk, bits, interleave))
    return torch.cat(out, dim=1).contiguous()


def unpack_codes(qweight: torch.Tensor, bits: int, in_features: int, interleave: int = INTERLEAVE) -> torch.Tensor:
    """Inverse of :func:`repack_codes`: int32 codes ``[in_features, N]``."""
    ns = slices_per_block(bits)
    n = qweight.shape[1]
    w = qweight.to(torch.int64) & _MASK32
    if bits != 3:
        w = w.view(-1, interleave, n)
        mask = (1 << bits) - 1
        c = torch.stack([(w >> (j * bits)) & mask for j in range(ns)], dim=1)
    else:
        w = w.view(-1, 3, interleave, n)
        a, b, cw = w[:, 0], w[:, 1], w[:, 2]
        parts = [(w[:, j // 10] >> (3 * (j % 10))) & 7 for j in range(30)]
        parts.append(((a >> 30) & 3) | (((b >> 30) & 1) << 2))
        parts.append(((b >> 31) & 1) | (((cw >> 30) & 3) << 1))
        c = torch.stack(parts, dim=1)
    return c.reshape(-1, n)[:in_features].to(torch.int32)


def prepare_weight(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    zero_point_offset: int,
    bias: torch.Tensor | None = None,
) -> PreparedWeight:
    """Repack checkpoint tensors (on their device) into a :class:`PreparedWeight`."""
    check_bits(bits)
    if qweight.dtype != torch.int32 or qweight.dim() != 2:
        raise FormatError(f"prepare_weight: qweight must be 2-D int32, got {qweight.dtype} {tuple(qweight.shape)}")
    words, n = qweight.shape
    if (words * 32) % bits:
        raise FormatError(f"prepare_weight: qweight has {words} rows, not whole {bits}-bit values")
    k = words * 32 // bits
    gs = k if group_size == PER_CHANNEL else group_size
    if gs <= 0 or k % gs:
        raise FormatError(f"prepare_weight: group_size {group_size} does not divide in_features {k}")
    groups = k // gs
    if tuple(scales.shape) != (groups, n):
        raise FormatError(f"prepare_weight: scales shape {tuple(scales.shape)}, expected {(groups, n)}")
    if qzeros.dtype != torch.int32 or tuple(qzeros.shape) != (groups, n * bits // 32):
        raise FormatError(f"prepare_weight: qzeros {qzeros.dtype} {tuple(qzeros.shape)}, expected int32 "
                          f"{(groups, n * bits // 32)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise FormatError(f"prepare_weight: bias shape {tuple(bias.shape)}, expected {(n,)}")
    true_zeros = unpack_cols(qzeros, bits).to(torch.int32) + zero_point_offset
    first = int(true_zeros.reshape(-1)[0])
    if bool((true_zeros == first).all()):
        zero_point, zeros = first, torch.empty(0, dtype=torch.uint8, device=qweight.device)
    else:
        zero_point = -1
        zdtype = torch.uint8 if int(true_zeros.max()) <= 255 and int(true_zeros.min()) >= 0 else torch.int16
        zeros = true_zeros.to(zdtype).contiguous()
    return PreparedWeight(
        qweight=repack_codes(unpack_rows(qweight, bits), bits),
        scales=scales.contiguous(),
        zeros=zeros,
        counters=torch.zeros(counters_size(n), dtype=torch.int32, device=qweight.device),
        bias=None if bias is None else bias.contiguous(),
        bits=bits,
        group_size=group_size,
        in_features=k,
        out_features=n,
        zero_point=zero_point,
    )


def dequantize_prepared(prepared: PreparedWeight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The ``[N, K]`` weight from the repacked layout, in float32 then ``dtype`` (torch only)."""
    p = prepared
    codes = unpack_codes(p.qweight, p.bits, p.in_features, p.interleave).to(torch.float32)
    gs = p.effective_group_size
    if p.zero_point >= 0:
        zeros = torch.full_like(p.scales, float(p.zero_point), dtype=torch.float32)
    else:
        zeros = p.zeros.to(torch.float32)
    w = (codes.view(-1, gs, p.out_features) - zeros.unsqueeze(1)) * p.scales.to(torch.float32).unsqueeze(1)
    return w.reshape(p.in_features, p.out_features).t().contiguous().to(dtype or p.scales.dtype)
