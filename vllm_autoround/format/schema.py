"""``quantization_config`` of config.json, as auto-round 0.16.1 writes it for the ``auto_round`` format.

Unknown keys are ignored on read (auto-round adds tuning metadata we do not need); every key we rely
on is validated with an error that names the file and field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec

from vllm_autoround.format.errors import FormatError
from vllm_autoround.format.jsonfile import read_json_object
from vllm_autoround.format.packing import SUPPORTED_BITS

QUANT_METHODS = ("auto-round", "auto_round")
# auto-round writes sym checkpoints as GPTQ v1 (zero points stored minus one) and asym ones with raw
# zero points; the value is how much to add to a stored zero point.
ZERO_POINT_OFFSETS = {"auto_round:auto_gptq": 1, "auto_round": 0}
PACKING_FORMAT_SYM = "auto_round:auto_gptq"
PACKING_FORMAT_ASYM = "auto_round"
PER_CHANNEL = -1
UNQUANTIZED_BITS = 16
SUPPORTED_GROUP_SIZES = (32, 64, 128, PER_CHANNEL)


class LayerOverride(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """A per-layer entry of ``extra_config``; missing fields inherit the global scheme."""

    bits: int | None = None
    group_size: int | None = None
    sym: bool | None = None
    data_type: str | None = None


class QuantConfig(msgspec.Struct, forbid_unknown_fields=False):
    """The fields of ``quantization_config`` that decide how a checkpoint is read."""

    bits: int = 4
    group_size: int = 128
    sym: bool = True
    data_type: str = "int"
    quant_method: str = "auto-round"
    packing_format: str = PACKING_FORMAT_SYM
    block_name_to_quantize: str | list[str] | None = None
    extra_config: dict[str, LayerOverride] = msgspec.field(default_factory=dict)
    # Tuning metadata auto-round records; kept so that our checkpoints describe how they were made.
    iters: int | None = None
    lr: float | None = None
    minmax_lr: float | None = None
    nsamples: int | None = None
    seqlen: int | None = None
    batch_size: int | None = None
    e2e_epochs: int | None = None  # ours: end-to-end scale tuning after SignRound (absent: none)
    e2e_lr: float | None = None
    e2e_nsamples: int | None = None
    autoround_version: str | None = None

    def override_for(self, layer_name: str) -> LayerOverride | None:
        """The ``extra_config`` entry of a layer: an exact key, else the first regex key that matches."""
        override = self.extra_config.get(layer_name)
        if override is None:
            for pattern, candidate in self.extra_config.items():
                if _is_regex(pattern) and re.search(pattern, layer_name):
                    return candidate
        return override

    def block_prefixes(self) -> list[str]:
        names = self.block_name_to_quantize
        if names is None:
            return []
        if isinstance(names, str):
            names = names.split(",")
        return [name.strip().rstrip(".") for name in names if name.strip()]

    def in_blocks(self, layer_name: str) -> bool:
        """Whether the global scheme applies: inside block_name_to_quantize (everywhere if it is unset)."""
        prefixes = self.block_prefixes()
        return not prefixes or any(layer_name.startswith(prefix + ".") for prefix in prefixes)

    def quantized_scheme(self, layer_name: str) -> LayerScheme | None:
        """The scheme a checkpoint layer was quantized with, or None where it is left in float."""
        if self.override_for(layer_name) is None and not self.in_blocks(layer_name):
            return None
        scheme = self.scheme_for(layer_name)
        return scheme if scheme.quantized else None

    def scheme_for(self, layer_name: str) -> LayerScheme:
        """The scheme of one linear layer: an exact ``extra_config`` key, else a regex key, else global."""
        override = self.override_for(layer_name) or LayerOverride()
        return LayerScheme(
            bits=override.bits if override.bits is not None else self.bits,
            group_size=override.group_size if override.group_size is not None else self.group_size,
            sym=override.sym if override.sym is not None else self.sym,
        )

    @property
    def zero_point_offset(self) -> int:
        return ZERO_POINT_OFFSETS[self.packing_format]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping; unset metadata (None) is left out, the scheme fields always written."""
        return {k: v for k, v in msgspec.to_builtins(self).items() if v is not None}


class LayerScheme(msgspec.Struct, frozen=True):
    """What one linear layer is: its bit width, group size and symmetry."""

    bits: int
    group_size: int
    sym: bool

    @property
    def quantized(self) -> bool:
        return self.bits < UNQUANTIZED_BITS

    def groups(self, in_features: int) -> int:
        return 1 if self.group_size == PER_CHANNEL else in_features // self.group_size

    def effective_group_size(self, in_features: int) -> int:
        return in_features if self.group_size == PER_CHANNEL else self.group_size

    def check_layer(self, in_features: int, out_features: int, where: str) -> None:
        """Raise FormatError if this scheme cannot describe a ``[out_features, in_features]`` weight."""
        if not self.quantized:
            return
        check_scheme(self.bits, self.group_size, where)
        gs = self.effective_group_size(in_features)
        if in_features % gs:
            raise FormatError(f"{where}: group_size {self.group_size} does not divide in_features {in_features}")
        if in_features % 32:
            raise FormatError(f"{where}: in_features {in_features} is not a multiple of 32 (int32 packing)")
        if (out_features * self.bits) % 32:
            raise FormatError(f"{where}: out_features {out_features} cannot pack {self.bits}-bit zeros "
                              f"into whole int32 words")


def _is_regex(key: str) -> bool:
    return any(ch in key for ch in "*?[](){}^$|\\")


def check_scheme(bits: int, group_size: int, where: str) -> None:
    if bits not in SUPPORTED_BITS and bits != UNQUANTIZED_BITS:
        raise FormatError(f"{where}: bits={bits} is not supported; use one of {SUPPORTED_BITS} (or 16)")
    if group_size not in SUPPORTED_GROUP_SIZES and not (group_size > 0 and group_size % 32 == 0):
        raise FormatError(f"{where}: group_size={group_size} is not supported; use 32, 64, 128, another "
                          f"multiple of 32, or -1 (per channel)")


def parse_quant_config(raw: dict[str, Any], source: str = "quantization_config") -> QuantConfig:
    """Validate a ``quantization_config`` mapping; errors name ``source`` and the field."""
    if not isinstance(raw, dict):
        raise FormatError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    try:
        cfg = msgspec.convert(raw, QuantConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise FormatError(f"{source}: {exc}") from None
    if cfg.quant_method not in QUANT_METHODS:
        raise FormatError(f"{source}: quant_method is {cfg.quant_method!r}, expected 'auto-round'")
    if cfg.packing_format not in ZERO_POINT_OFFSETS:
        raise FormatError(f"{source}: packing_format {cfg.packing_format!r} is not supported; "
                          f"expected one of {sorted(ZERO_POINT_OFFSETS)}")
    if cfg.data_type != "int":
        raise FormatError(f"{source}: data_type {cfg.data_type!r} is not supported; expected 'int'")
    check_scheme(cfg.bits, cfg.group_size, source)
    for layer, override in cfg.extra_config.items():
        where = f"{source}.extra_config[{layer!r}]"
        if override.data_type not in (None, "int", "float"):
            raise FormatError(f"{where}: data_type {override.data_type!r} is not supported")
        scheme = cfg.scheme_for(layer) if not _is_regex(layer) else None
        if scheme is not None:
            check_scheme(scheme.bits, scheme.group_size, where)
        elif override.bits is not None or override.group_size is not None:
            check_scheme(override.bits or cfg.bits, override.group_size or cfg.group_size, where)
    return cfg


def load_quant_config(model_dir: str | Path) -> QuantConfig:
    """Read and validate ``quantization_config`` from ``model_dir/config.json``."""
    path = Path(model_dir) / "config.json"
    config = read_json_object(path)
    if "quantization_config" not in config:
        raise FormatError(f"{path}: no quantization_config field; is this a quantized checkpoint?")
    return parse_quant_config(config["quantization_config"], f"{path}: quantization_config")
