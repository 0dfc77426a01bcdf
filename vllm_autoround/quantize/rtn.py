"""Round-to-nearest: quantize each planned linear weight straight from the safetensors, block by block."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from vllm_autoround.format.tensors import pack_linear
from vllm_autoround.quantize.model_files import ModelFiles
from vllm_autoround.quantize.plan import LinearLayer, QuantPlan
from vllm_autoround.quantize.qdq import quantize_to_codes
from vllm_autoround.quantize.writer import CheckpointWriter

REST_UNIT = "rest"


def block_unit(index: int) -> str:
    return f"block-{index:04d}"


def pack_layer(layer: LinearLayer, weight: torch.Tensor, zero_point_offset: int, device: str | torch.device = "cpu",
               **tuned) -> dict[str, torch.Tensor]:
    """Checkpoint tensors of one quantized layer (``tuned`` = SignRound's v/alpha/beta, if any)."""
    if tuple(weight.shape) != (layer.out_features, layer.in_features):
        raise ValueError(f"{layer.name}.weight: shape {tuple(weight.shape)}, expected "
                         f"{(layer.out_features, layer.in_features)}")
    tuned = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in tuned.items()}
    packed = quantize_to_codes(weight.to(device), layer.scheme, **tuned)
    return {f"{layer.name}.{k}": v.cpu() for k, v in pack_linear(packed, zero_point_offset).items()}


def unit_tensors(
    files: ModelFiles, names: list[str], layers: list[LinearLayer], zero_point_offset: int, tuned=None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """All checkpoint tensors of one unit: planned layers packed, everything else copied unchanged."""
    by_weight = {f"{layer.name}.weight": layer for layer in layers if layer.scheme.quantized}
    tuned = tuned or {}
    out: dict[str, torch.Tensor] = {}
    for name in names:
        layer = by_weight.get(name)
        if layer is None:
            out[name] = files.tensor(name)
        else:
            out.update(pack_layer(layer, files.tensor(name), zero_point_offset, device, **tuned.get(layer.name, {})))
    return out


def unit_names(files: ModelFiles, plan: QuantPlan) -> dict[str, list[str]]:
    """Checkpoint tensor names grouped into units: one per block, the rest together."""
    units: dict[str, list[str]] = {block_unit(i): [] for i in range(plan.num_blocks)}
    units[REST_UNIT] = []
    prefix = plan.block_prefix + "."
    for name in files.names():
        if name.startswith(prefix):
            index = name[len(prefix):].split(".", 1)[0]
            if index.isdigit() and int(index) < plan.num_blocks:
                units[block_unit(int(index))].append(name)
                continue
        units[REST_UNIT].append(name)
    return units


def quantize_rtn(files: ModelFiles, plan: QuantPlan, writer: CheckpointWriter,
                 device: str | torch.device = "cpu") -> None:
    offset = plan.quant_config().zero_point_offset
    units = unit_names(files, plan)
    bar = tqdm(total=len(units), desc="RTN", unit="unit")
    for index, (unit, names) in enumerate(units.items()):
        bar.update(1)
        if writer.is_done(unit):
            continue
        layers = plan.blocks[index] if index < plan.num_blocks else plan.extra
        writer.write_unit(unit, unit_tensors(files, names, layers, offset, device=device))
    bar.close()
