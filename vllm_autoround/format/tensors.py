"""The four tensors of one quantized linear layer: shapes, dtypes, packing and validation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from vllm_autoround.format.errors import FormatError
from vllm_autoround.format.packing import pack_cols, pack_rows, unpack_codes_and_zeros
from vllm_autoround.format.schema import LayerScheme

SCALE_DTYPE = torch.float16
TENSOR_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


@dataclass
class PackedLinear:
    """Integer codes, scales and zero points of a ``[N, K]`` linear weight, unpacked.

    ``codes`` is ``[K, N]`` in ``[0, 2**bits)``; ``scales`` and ``zeros`` are ``[G, N]`` (zeros as
    true zero points, not the stored minus-one values).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    scheme: LayerScheme

    @property
    def in_features(self) -> int:
        return self.codes.shape[0]

    @property
    def out_features(self) -> int:
        return self.codes.shape[1]


def expected_shapes(scheme: LayerScheme, in_features: int, out_features: int) -> dict[str, tuple[int, ...]]:
    groups = scheme.groups(in_features)
    return {
        "qweight": (in_features * scheme.bits // 32, out_features),
        "qzeros": (groups, out_features * scheme.bits // 32),
        "scales": (groups, out_features),
        "g_idx": (in_features,),
    }


def pack_linear(packed: PackedLinear, zero_point_offset: int, with_g_idx: bool = False) -> dict[str, torch.Tensor]:
    """Checkpoint tensors (qweight, qzeros, scales[, g_idx]) for one layer.

    ``zero_point_offset`` comes from the packing format (:attr:`QuantConfig.zero_point_offset`).
    auto-round omits g_idx; so do we unless asked.
    """
    scheme = packed.scheme
    k, n = packed.codes.shape
    scheme.check_layer(k, n, "pack_linear")
    stored_zeros = packed.zeros.to(torch.int64) - zero_point_offset
    if int(stored_zeros.min()) < 0:
        raise FormatError(f"pack_linear: a zero point below {zero_point_offset} cannot be stored with "
                          f"offset {zero_point_offset}; use the asym packing format")
    tensors = {
        "qweight": pack_rows(packed.codes.to(torch.int32), scheme.bits),
        "qzeros": pack_cols(stored_zeros.to(torch.int32), scheme.bits),
        "scales": packed.scales.to(SCALE_DTYPE).contiguous(),
    }
    if with_g_idx:
        tensors["g_idx"] = torch.arange(k, dtype=torch.int32) // scheme.effective_group_size(k)
    return tensors


def check_layer_tensors(
    tensors: Mapping[str, torch.Tensor], scheme: LayerScheme, in_features: int, out_features: int, where: str
) -> None:
    """Raise FormatError naming ``where`` and the tensor if any shape, dtype or g_idx is off."""
    scheme.check_layer(in_features, out_features, where)
    shapes = expected_shapes(scheme, in_features, out_features)
    for suffix in ("qweight", "qzeros", "scales"):
        if suffix not in tensors:
            raise FormatError(f"{where}.{suffix}: missing from the checkpoint")
    for suffix, shape in shapes.items():
        if suffix not in tensors:
            continue
        tensor = tensors[suffix]
        if tuple(tensor.shape) != shape:
            raise FormatError(f"{where}.{suffix}: shape {tuple(tensor.shape)} does not match {shape} expected "
                              f"for bits={scheme.bits} group_size={scheme.group_size} "
                              f"[out={out_features}, in={in_features}]")
    for suffix in ("qweight", "qzeros", "g_idx"):
        if suffix in tensors and tensors[suffix].dtype != torch.int32:
            raise FormatError(f"{where}.{suffix}: dtype {tensors[suffix].dtype}, expected torch.int32")
    if not tensors["scales"].is_floating_point():
        raise FormatError(f"{where}.scales: dtype {tensors['scales'].dtype}, expected a float type")
    if "g_idx" in tensors:
        gs = scheme.effective_group_size(in_features)
        trivial = torch.arange(in_features, dtype=torch.int32) // gs
        if not torch.equal(tensors["g_idx"].cpu(), trivial):
            raise FormatError(f"{where}.g_idx: act-order (non-sequential g_idx) is not supported")


def infer_features(tensors: Mapping[str, torch.Tensor], bits: int, where: str) -> tuple[int, int]:
    """(in_features, out_features) implied by a layer's packed qweight."""
    if "qweight" not in tensors:
        raise FormatError(f"{where}.qweight: missing from the checkpoint")
    words, out_features = tensors["qweight"].shape
    if (words * 32) % bits:
        raise FormatError(f"{where}.qweight: {words} rows cannot hold whole {bits}-bit values")
    return words * 32 // bits, out_features


def unpack_linear(
    tensors: Mapping[str, torch.Tensor], scheme: LayerScheme, zero_point_offset: int, where: str
) -> PackedLinear:
    """Validate and unpack one layer's checkpoint tensors."""
    in_features, out_features = infer_features(tensors, scheme.bits, where)
    check_layer_tensors(tensors, scheme, in_features, out_features, where)
    codes, zeros = unpack_codes_and_zeros(tensors["qweight"], tensors["qzeros"], scheme.bits, zero_point_offset)
    return PackedLinear(codes=codes, scales=tensors["scales"], zeros=zeros, scheme=scheme)
