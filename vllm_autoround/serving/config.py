"""``auto_round`` as a vLLM QuantizationConfig: which layers are quantized, with which scheme."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from vllm.logger import init_logger
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig, QuantizeMethodBase

from vllm_autoround.format.errors import FormatError
from vllm_autoround.format.schema import QUANT_METHODS, LayerScheme, QuantConfig, parse_quant_config
from vllm_autoround.format.validate import quantized_layers, validate_checkpoint
from vllm_autoround.serving.plugin import METHOD_NAME

logger = init_logger(__name__)

# vLLM fuses these checkpoint layers into one; models usually tell us through packed_modules_mapping.
DEFAULT_PACKED_MODULES = {
    "qkv_proj": ["q_proj", "k_proj", "v_proj"],
    "gate_up_proj": ["gate_proj", "up_proj"],
}


class AutoRoundConfig(QuantizationConfig):
    """Reads auto-round checkpoints (``quant_method: auto-round``) when the user asks for ``auto_round``."""

    def __init__(self, quant: QuantConfig) -> None:
        super().__init__()
        self.quant = quant
        self.checkpoint_layers: set[str] | None = None  # quantized layers seen in safetensors headers
        self.has_g_idx = False

    def __repr__(self) -> str:
        return (f"AutoRoundConfig(bits={self.quant.bits}, group_size={self.quant.group_size}, "
                f"sym={self.quant.sym}, packing_format={self.quant.packing_format!r}, "
                f"overrides={len(self.quant.extra_config)})")

    @classmethod
    def get_name(cls) -> str:
        return METHOD_NAME

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 60

    @staticmethod
    def get_config_filenames() -> list[str]:
        return ["quantization_config.json"]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AutoRoundConfig:
        return cls(parse_quant_config(config, "quantization_config"))

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant: str | None,
                                     hf_config: Any = None) -> str | None:
        """Claim auto-round checkpoints only when the user passes ``--quantization auto_round``."""
        if user_quant == METHOD_NAME and str(hf_quant_cfg.get("quant_method", "")).lower() in QUANT_METHODS:
            return METHOD_NAME
        return None

    @staticmethod
    def get_checkpoint_weight_mapper():
        """Drop g_idx on load: act-order is not supported and a trivial g_idx carries nothing."""
        from vllm.model_executor.models.utils import WeightsMapper

        return WeightsMapper(orig_to_new_suffix={".g_idx": None})

    def apply_vllm_mapper(self, hf_to_vllm_mapper) -> None:
        """Rename checkpoint layer names in the config to vLLM module names (e.g. for multimodal models)."""
        quant = self.quant
        quant.extra_config = hf_to_vllm_mapper.apply_dict(quant.extra_config)
        if quant.block_name_to_quantize is not None:
            quant.block_name_to_quantize = hf_to_vllm_mapper.apply_list(quant.block_prefixes())
        if self.checkpoint_layers is not None:
            self.checkpoint_layers = set(hf_to_vllm_mapper.apply_list(sorted(self.checkpoint_layers)))

    def maybe_update_config(self, model_name: str, hf_config: Any = None, revision: str | None = None) -> None:
        """Validate a local checkpoint's tensors against the config before vLLM loads any of them."""
        if not Path(model_name).is_dir():
            return
        tensors = validate_checkpoint(model_name, self.quant)
        self.checkpoint_layers = set(quantized_layers(tensors))
        self.has_g_idx = any(name.endswith(".g_idx") for name in tensors)

    # -- per-layer decisions ---------------------------------------------------------------------------

    def checkpoint_names(self, prefix: str) -> list[str]:
        """The checkpoint layers behind one vLLM layer (several when vLLM fuses them)."""
        parent, _, leaf = prefix.rpartition(".")
        mapping = self.packed_modules_mapping or DEFAULT_PACKED_MODULES
        parts = mapping.get(leaf) or DEFAULT_PACKED_MODULES.get(leaf)
        if not parts:
            return [prefix]
        return [f"{parent}.{part}" if parent else part for part in parts]

    def scheme_for_prefix(self, prefix: str) -> LayerScheme | None:
        """The one scheme of a (possibly fused) vLLM layer, or None when it stays unquantized."""
        names = self.checkpoint_names(prefix)
        schemes = {name: self.quant.quantized_scheme(name) for name in names}
        if self.checkpoint_layers is not None:
            for name, scheme in schemes.items():
                if scheme is not None and name not in self.checkpoint_layers:
                    raise FormatError(f"{name}: quantization_config says bits={scheme.bits} but the checkpoint "
                                      f"has no {name}.qweight")
        distinct = set(schemes.values())
        if len(distinct) > 1:
            listing = ", ".join(f"{n}={s.bits if s else 16}b/g{s.group_size if s else '-'}"
                                for n, s in schemes.items())
            raise FormatError(f"{prefix}: vLLM fuses {listing} into one layer, so they must share one scheme")
        return distinct.pop()

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

        from vllm_autoround.serving.linear import AutoRoundLinearMethod

        if isinstance(layer, ParallelLMHead):
            scheme = self.scheme_for_prefix(prefix)
            if scheme is None:
                return None
            if layer.num_embeddings_padded != layer.org_vocab_size:
                raise FormatError(f"{prefix}: a quantized lm_head needs a vocabulary that vLLM does not pad "
                                  f"(a multiple of 64); this one has {layer.org_vocab_size} entries")
            return AutoRoundLinearMethod(scheme, self.quant.zero_point_offset, prefix)
        if isinstance(layer, LinearBase):
            scheme = self.scheme_for_prefix(prefix)
            if scheme is None:
                return UnquantizedLinearMethod()
            return AutoRoundLinearMethod(scheme, self.quant.zero_point_offset, prefix)
        if self.checkpoint_layers and any(name.startswith(prefix + ".") for name in self.checkpoint_layers):
            raise FormatError(f"{prefix}: quantized {type(layer).__name__} layers (e.g. MoE experts) are not "
                              f"supported by the auto_round plugin yet")
        return None
