"""vLLM linear method for auto-round layers: packed parameters in, dequant-GEMM out.

Parameters use vLLM's parameter classes so that fused QKV / gate-up loading and tensor-parallel
sharding work unchanged; ``Fraction(32, bits)`` as the packing factor keeps 3-bit shard offsets exact.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import torch
from vllm.logger import init_logger
from vllm.model_executor.layers.linear import LinearMethodBase
from vllm.model_executor.parameter import (
    ChannelQuantScaleParameter,
    GroupQuantScaleParameter,
    PackedColumnParameter,
    PackedvLLMParameter,
)

from vllm_autoround.format.errors import FormatError
from vllm_autoround.format.schema import PER_CHANNEL, LayerScheme
from vllm_autoround.kernels import cpu_int4, cpu_int8
from vllm_autoround.kernels.reference import dequantize, reference_linear
from vllm_autoround.serving import backend

logger = init_logger(__name__)
SCALE_PARAM_DTYPE = torch.float32  # holds fp16/bf16 checkpoint scales exactly
CPU_PACKED = "cpu_packed"  # the torch path on a CPU, through torch's int4-packed GEMM (int8 for per-channel W8)
# the CPU GEMM modules, their switches and what the log says when a layer first takes one
CPU_KERNELS = ((cpu_int4, backend.cpu_int4_enabled, "2-, 3- and 4-bit layers run torch's int4-packed CPU GEMM"),
               (cpu_int8, backend.cpu_int8_enabled, "8-bit layers run torch's int4-packed CPU GEMM on 4-bit halves "
                "(per-channel ones its int8 GEMM)"))


def _frozen(tensor: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(tensor, requires_grad=False)


class AutoRoundLinearMethod(LinearMethodBase):
    """One quantized (possibly fused, possibly sharded) linear layer."""

    def __init__(self, scheme: LayerScheme, zero_point_offset: int, prefix: str) -> None:
        self.scheme = scheme
        self.zero_point_offset = zero_point_offset
        self.prefix = prefix
        self.backend = backend.TORCH
        self.cache_dequantized = False
        # with CPU_PACKED: the kernels module, the type of its repacked weight and that type's fields
        self.cpu_kernel = None
        self.cpu_packed_type = None
        self.cpu_fields: tuple[str, ...] = ()

    def _check_partition(self, in_pp: int, output_partition_sizes: list[int]) -> None:
        bits, gs = self.scheme.bits, self.scheme.group_size
        where = f"{self.prefix} (bits={bits}, group_size={gs})"
        if in_pp % 32:
            raise FormatError(f"{where}: input partition of {in_pp} is not a multiple of 32; use a tensor-parallel "
                              f"size that splits the input into whole int32 words")
        if gs != PER_CHANNEL and in_pp % gs:
            raise FormatError(f"{where}: input partition of {in_pp} does not hold whole groups of {gs}; use a "
                              f"tensor-parallel size that keeps splits group-aligned")
        for size in output_partition_sizes:
            if (size * bits) % 32:
                raise FormatError(f"{where}: output partition of {size} cannot hold whole {bits}-bit zero-point "
                                  f"words")

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs) -> None:
        self._check_partition(input_size_per_partition, output_partition_sizes)
        bits = self.scheme.bits
        out_pp = sum(output_partition_sizes)
        weight_loader = extra_weight_attrs["weight_loader"]
        pack = Fraction(32, bits)
        qweight = PackedvLLMParameter(
            data=torch.empty(input_size_per_partition * bits // 32, out_pp, dtype=torch.int32),
            input_dim=0, output_dim=1, packed_dim=0, packed_factor=pack, weight_loader=weight_loader)
        if self.scheme.group_size == PER_CHANNEL:
            # Every input shard shares the same per-channel scales and zeros: replicate them.
            scales = ChannelQuantScaleParameter(
                data=torch.empty(1, out_pp, dtype=SCALE_PARAM_DTYPE), output_dim=1, weight_loader=weight_loader)
            qzeros = PackedColumnParameter(
                data=torch.empty(1, out_pp * bits // 32, dtype=torch.int32),
                output_dim=1, packed_dim=1, packed_factor=pack, weight_loader=weight_loader)
        else:
            groups = input_size_per_partition // self.scheme.group_size
            scales = GroupQuantScaleParameter(
                data=torch.empty(groups, out_pp, dtype=SCALE_PARAM_DTYPE), output_dim=1, input_dim=0,
                weight_loader=weight_loader)
            qzeros = PackedvLLMParameter(
                data=torch.empty(groups, out_pp * bits // 32, dtype=torch.int32),
                input_dim=0, output_dim=1, packed_dim=1, packed_factor=pack, weight_loader=weight_loader)
        layer.register_parameter("qweight", qweight)
        layer.register_parameter("qzeros", qzeros)
        layer.register_parameter("scales", scales)
        layer.autoround_params_dtype = params_dtype

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        # Plain parameters from here on: vLLM's loader subclasses confuse torch.compile.
        for name in ("qweight", "qzeros", "scales"):
            setattr(layer, name, _frozen(getattr(layer, name).data))
        self.backend = backend.choose_backend()
        if self.backend == backend.TRITON:
            self._prepare_triton(layer)
        if self.backend == backend.TORCH and backend.dequant_cache_enabled():
            layer.dequantized_weight = _frozen(self._dequantize(layer, layer.autoround_params_dtype))
            self.cache_dequantized = True
        elif self.backend == backend.TORCH:
            self._prepare_cpu_packed(layer)

    def _cpu_kernel(self, layer: torch.nn.Module):
        """The entry of :data:`CPU_KERNELS` (module, switch, log note) whose module takes this layer: CPU tensors, a
        scheme it supports, and its switch on (``VLLM_AUTOROUND_CPU_INT4=0`` / ``VLLM_AUTOROUND_CPU_INT8=0`` leave
        the reference path that XPU and Gaudi use); None otherwise."""
        if layer.qweight.device.type != "cpu":
            return None
        for entry in CPU_KERNELS:
            module, enabled, _ = entry
            if enabled() and module.supported(self.scheme.bits, self.scheme.group_size, self._in_features(layer)):
                return entry
        return None

    def _in_features(self, layer: torch.nn.Module) -> int:
        return layer.qweight.shape[0] * 32 // self.scheme.bits

    def _prepare_cpu_packed(self, layer: torch.nn.Module) -> None:
        """Repack for the layer's CPU GEMM once; its fields become the layer's ``autoround_cpu_*`` attributes."""
        entry = self._cpu_kernel(layer)
        if entry is None:
            return
        module, _, note = entry
        s = self.scheme
        packed = module.pack(layer.qweight.data, layer.qzeros.data, layer.scales.data, s.bits, s.group_size,
                             self.zero_point_offset, layer.autoround_params_dtype)
        self.cpu_fields = tuple(field.name for field in dataclasses.fields(packed))
        for name in self.cpu_fields:
            value = getattr(packed, name)
            setattr(layer, f"autoround_cpu_{name}", _frozen(value) if isinstance(value, torch.Tensor) else value)
        self.cpu_kernel = module
        self.cpu_packed_type = type(packed)
        del layer.qweight, layer.qzeros, layer.scales
        self.backend = CPU_PACKED
        logger.info_once("auto_round: %s (%s activations)", note, layer.autoround_params_dtype)

    def _prepare_triton(self, layer: torch.nn.Module) -> None:
        from vllm_autoround import kernels

        s = self.scheme
        in_features = self._in_features(layer)
        out_features = layer.qweight.shape[1]
        supports = getattr(kernels, "supports", None)
        if supports is None or not supports(s.bits, s.group_size, in_features, out_features, layer.qweight.device):
            logger.warning("auto_round: no Triton kernel for %s (bits=%d group_size=%d, %dx%d); using the torch "
                           "reference path for this layer", self.prefix, s.bits, s.group_size, out_features,
                           in_features)
            self.backend = backend.TORCH
            return
        prepared = kernels.prepare_weight(layer.qweight.data, layer.qzeros.data, layer.scales.data, bits=s.bits,
                                          group_size=s.group_size, zero_point_offset=self.zero_point_offset)
        layer.autoround_prepared_type = type(prepared)
        for name, tensor in prepared.tensors().items():
            setattr(layer, f"autoround_{name}", _frozen(tensor))
        layer.autoround_prepared_meta = prepared.meta()
        del layer.qweight, layer.qzeros, layer.scales

    def _dequantize(self, layer: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
        s = self.scheme
        return dequantize(layer.qweight, layer.qzeros, layer.scales, s.bits, s.group_size, self.zero_point_offset,
                          dtype)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.backend == backend.TRITON:
            from vllm_autoround import kernels

            prepared_type = layer.autoround_prepared_type
            tensors = {name: getattr(layer, f"autoround_{name}") for name in prepared_type.tensor_names()}
            prepared = prepared_type.from_tensors(tensors, layer.autoround_prepared_meta)
            return kernels.quantized_linear(x, prepared, bias)
        if self.backend == CPU_PACKED:
            # (field names kept from loading: torch.compile does not trace dataclasses.fields)
            packed = self.cpu_packed_type(**{name: getattr(layer, f"autoround_cpu_{name}") for name in self.cpu_fields})
            dtype = layer.autoround_params_dtype
            return self.cpu_kernel.linear(x.to(dtype), packed, bias).to(x.dtype)
        if self.cache_dequantized:
            return torch.nn.functional.linear(x, layer.dequantized_weight.to(x.dtype), bias)
        s = self.scheme
        return reference_linear(x, layer.qweight, layer.qzeros, layer.scales, s.bits, s.group_size,
                                self.zero_point_offset, bias)
