"""Which linear layers to quantize and how: decoder blocks found on a meta-device model, per-layer schemes.

The plan is the one place where the global scheme, ``--layer_config`` overrides and shape constraints
meet; RTN and SignRound both execute a plan, and the config writer turns it into ``extra_config``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from vllm_autoround.format.errors import FormatError
from vllm_autoround.format.schema import (
    PACKING_FORMAT_ASYM,
    PACKING_FORMAT_SYM,
    UNQUANTIZED_BITS,
    LayerOverride,
    LayerScheme,
    QuantConfig,
    check_scheme,
)


@dataclass
class LinearLayer:
    name: str
    in_features: int
    out_features: int
    scheme: LayerScheme
    bias: bool


@dataclass
class QuantPlan:
    block_prefix: str
    num_blocks: int
    blocks: list[list[LinearLayer]]
    global_scheme: LayerScheme
    extra: list[LinearLayer] = field(default_factory=list)  # quantized layers outside blocks (lm_head)
    skipped: dict[str, str] = field(default_factory=dict)  # layer name -> reason
    regrouped: dict[str, int] = field(default_factory=dict)  # layer name -> the smaller group size it got
    # weight tensors in the blocks that are not nn.Linear (fused MoE experts, routers): block-relative name ->
    # shape in one block; they stay in full precision
    not_linear: dict[str, list[int]] = field(default_factory=dict)
    not_linear_share: float = 0.0  # their elements over all the blocks' weight-matrix elements

    def layers(self) -> list[LinearLayer]:
        return [layer for block in self.blocks for layer in block] + self.extra

    def quantized_names(self) -> set[str]:
        return {layer.name for layer in self.layers() if layer.scheme.quantized}

    def packing_format(self) -> str:
        """GPTQ v1 (zero minus one) when every layer is sym, like auto-round; raw zeros otherwise."""
        any_asym = any(not layer.scheme.sym for layer in self.layers() if layer.scheme.quantized)
        return PACKING_FORMAT_ASYM if any_asym else PACKING_FORMAT_SYM

    def quant_config(self, **metadata: Any) -> QuantConfig:
        g = self.global_scheme
        extra: dict[str, LayerOverride] = {}
        outside_blocks = {layer.name for layer in self.extra}
        for layer in self.layers():
            s = layer.scheme
            # Readers treat layers outside block_name_to_quantize as unquantized unless listed here.
            if s != g or layer.name in outside_blocks:
                extra[layer.name] = (LayerOverride(bits=UNQUANTIZED_BITS, data_type="float") if not s.quantized
                                     else LayerOverride(bits=s.bits, group_size=s.group_size, sym=s.sym))
        for name in self.skipped:
            extra.setdefault(name, LayerOverride(bits=UNQUANTIZED_BITS, data_type="float"))
        return QuantConfig(bits=g.bits, group_size=g.group_size, sym=g.sym, packing_format=self.packing_format(),
                           block_name_to_quantize=self.block_prefix, extra_config=extra, **metadata)


def parse_layer_config(text: str | None) -> dict[str, dict[str, Any]]:
    """``--layer_config``: a JSON object, or a path to a JSON file, of name-or-regex → overrides."""
    if not text:
        return {}
    source = "--layer_config"
    if not text.lstrip().startswith("{"):
        source = text
        try:
            text = open(text).read()
        except OSError as exc:
            raise FormatError(f"{source}: cannot read layer config ({exc.strerror})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{source}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(raw, dict):
        raise FormatError(f"{source}: expected a JSON object of layer name -> settings")
    for key, value in raw.items():
        if not isinstance(value, dict) or not set(value) <= {"bits", "group_size", "sym", "data_type"}:
            raise FormatError(f"{source}[{key!r}]: expected an object with bits, group_size and/or sym")
    return raw


def _match(overrides: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    if name in overrides:
        return overrides[name]
    return next((value for pattern, value in overrides.items() if _safe_search(pattern, name)), {})


def find_blocks(model: torch.nn.Module) -> tuple[str, int]:
    """The decoder-block ModuleList: the first ModuleList whose items contain Linear layers."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            if any(isinstance(m, torch.nn.Linear) for m in module[0].modules()):
                return name, len(module)
    raise FormatError("no decoder blocks (a ModuleList of modules with Linear layers) found in the model")


def meta_model(config: dict[str, Any]) -> torch.nn.Module:
    """The model's module tree with no storage, built from its config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "quantization_config"})
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


FALLBACK_GROUP_SIZES = (64, 32)


def fit_group_size(scheme: LayerScheme, in_features: int) -> LayerScheme:
    """The scheme with the largest smaller group size (64, 32) that divides ``in_features`` when its own
    does not (SmolLM2's 576 = 4.5 x 128). auto-round pads the last group instead, which the GPTQ layout
    that vLLM reads cannot hold; a smaller group is slightly more accurate and serves everywhere."""
    if scheme.group_size <= 0 or in_features % scheme.group_size == 0:
        return scheme
    for size in FALLBACK_GROUP_SIZES:
        if size < scheme.group_size and in_features % size == 0:
            return LayerScheme(bits=scheme.bits, group_size=size, sym=scheme.sym)
    return scheme


def build_plan(
    model: torch.nn.Module,
    scheme: LayerScheme,
    layer_config: dict[str, dict[str, Any]] | None = None,
    quant_lm_head: bool = False,
) -> QuantPlan:
    check_scheme(scheme.bits, scheme.group_size, "--bits/--group_size")
    layer_config = layer_config or {}
    prefix, count = find_blocks(model)
    blocks: list[list[LinearLayer]] = [[] for _ in range(count)]
    extra: list[LinearLayer] = []
    skipped: dict[str, str] = {}
    regrouped: dict[str, int] = {}
    block_re = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        match = block_re.match(name)
        is_head = name == "lm_head" or name.endswith(".lm_head")
        if not match and not (is_head and quant_lm_head):
            continue
        override = _match(layer_config, name)
        layer_scheme = LayerScheme(
            bits=override.get("bits", scheme.bits),
            group_size=override.get("group_size", scheme.group_size),
            sym=override.get("sym", scheme.sym),
        )
        if layer_scheme.quantized:
            check_scheme(layer_scheme.bits, layer_scheme.group_size, f"layer_config[{name!r}]")
            fitted = fit_group_size(layer_scheme, module.in_features)
            if fitted != layer_scheme:
                regrouped[name], layer_scheme = fitted.group_size, fitted
            try:
                layer_scheme.check_layer(module.in_features, module.out_features, name)
            except FormatError as exc:
                skipped[name] = str(exc)
                continue
        layer = LinearLayer(name, module.in_features, module.out_features, layer_scheme, module.bias is not None)
        if match:
            blocks[int(match.group(1))].append(layer)
        else:
            extra.append(layer)
    planned = [layer.name for block in blocks for layer in block] + [layer.name for layer in extra]
    for key in layer_config:
        if not any(key == name or _safe_search(key, name) for name in planned):
            raise FormatError(f"--layer_config key {key!r} matches no linear layer of the model")
    not_linear, share = _weights_outside_linears(model, prefix)
    return QuantPlan(prefix, count, blocks, scheme, extra, skipped, regrouped, not_linear, share)


def _weights_outside_linears(model: torch.nn.Module, prefix: str) -> tuple[dict[str, list[int]], float]:
    """Weight matrices (2-D and up) of the decoder blocks that no nn.Linear owns, e.g. transformers' fused MoE
    experts (``mlp.experts.gate_up_proj [E, 2I, H]``): the plan can only quantize Linear layers, so a user must
    hear that these stay in full precision, and how much of the model they are."""
    blocks = model.get_submodule(prefix)
    found: dict[str, list[int]] = {}
    outside = total = 0
    for index, block in enumerate(blocks):
        linear_weights = {id(m.weight) for m in block.modules() if isinstance(m, torch.nn.Linear)}
        for name, param in block.named_parameters():
            if param.dim() < 2 or not param.is_floating_point():
                continue
            total += param.numel()
            if id(param) not in linear_weights:
                outside += param.numel()
                if index == 0:
                    found[name] = list(param.shape)
    return found, (outside / total if total else 0.0)


def plan_warnings(plan: QuantPlan) -> list[str]:
    """One line per kind of departure from the requested scheme, for the console."""
    lines = []
    if plan.regrouped:
        sizes = sorted(set(plan.regrouped.values()), reverse=True)
        lines.append(f"{len(plan.regrouped)} layers get group_size {'/'.join(map(str, sizes))} instead of "
                     f"{plan.global_scheme.group_size}, which does not divide their in_features (e.g. "
                     f"{next(iter(plan.regrouped))}); see quantize_report.json")
    if plan.not_linear:
        listed = sorted(plan.not_linear.items(), key=lambda item: -math.prod(item[1]))
        shown = ", ".join(f"{name} {shape}" for name, shape in listed[:3])
        more = f" and {len(listed) - 3} more" if len(listed) > 3 else ""
        lines.append(f"{plan.not_linear_share:.0%} of the decoder blocks' weights are not nn.Linear layers and stay "
                     f"in full precision (per block: {shown}{more}); only Linear layers are quantized, so fused "
                     f"MoE experts are not supported yet")
    if plan.skipped:
        lines.append(f"{len(plan.skipped)} layers stay unquantized: {next(iter(plan.skipped.values()))}"
                     + (f" (and {len(plan.skipped) - 1} more; see quantize_report.json)" if len(plan.skipped) > 1
                        else ""))
    return lines


def _safe_search(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False
