"""Decoder blocks one at a time, straight from the safetensors, and the inputs the model gives them.

The model is built on the meta device. To learn what each block receives, its decoder layers are swapped
for recorders and the real model forward runs with only the parts before the blocks materialized
(embedding, rotary embedding, mask construction): every recorder sees exactly the positional and keyword
arguments (attention mask, position embeddings, position ids, ...) the model passes to that layer, which
differ per layer in sliding-window families (Gemma 2/3, Qwen 2/3, Mistral). The first recorder also
keeps the hidden states: the first block's inputs. Blocks are then materialized one by one, so a model
larger than the accelerator (or the host) can be processed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vllm_autoround.format.errors import FormatError
from vllm_autoround.quantize.model_files import ModelFiles
from vllm_autoround.quantize.plan import QuantPlan, meta_model


class _StopForward(Exception):
    """Raised by the last recorder: nothing after the decoder blocks is needed."""


@dataclass
class BlockCall:
    """The arguments the model passes to one decoder layer besides its hidden states."""

    args: tuple
    kwargs: dict[str, Any]


class _Recorder(torch.nn.Module):
    def __init__(self, index: int, sink: dict[str, Any], last: bool) -> None:
        super().__init__()
        self.index, self.sink, self.last = index, sink, last

    def forward(self, *args, **kwargs):
        if args:
            hidden, rest = args[0], args[1:]
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        calls = self.sink["calls"]
        if self.index not in calls:
            calls[self.index] = BlockCall(rest, kwargs)
        if self.index == 0:
            self.sink["hidden"].append(hidden)
        if self.last:
            raise _StopForward
        return hidden


def _module_for(root: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    owner, _, leaf = name.rpartition(".")
    return (root.get_submodule(owner) if owner else root), leaf


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every tensor inside nested tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(map_tensors(o, fn) for o in obj)
    if isinstance(obj, list):
        return [map_tensors(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _materialize(root: torch.nn.Module, files: ModelFiles, prefix: str, dtype: torch.dtype, device: torch.device,
                 init: Callable[[torch.nn.Module], None] | None, required: bool,
                 skip: frozenset[str] = frozenset()) -> list[str]:
    """Give ``root`` real storage on ``device``: buffers recomputed first (as transformers does after meta
    initialization), then parameters and persistent buffers read from the checkpoint (``prefix`` + name),
    floating ones in ``dtype``. Parameters absent from the checkpoint stay on the meta device (an error
    if ``required``); their names are returned."""
    for module in root.modules():
        buffers = {k: b for k, b in module._buffers.items() if b is not None}
        if buffers:
            for key, buf in buffers.items():
                module._buffers[key] = torch.empty_like(buf, device=device)
            if init is not None:
                init(module)
    missing: list[str] = []
    for name, param in list(root.named_parameters()):
        full = prefix + name
        if full in skip:
            continue
        if not files.has(full):
            if required:
                raise FormatError(f"{files.root}: tensor {full!r} not found in the checkpoint")
            missing.append(full)
            continue
        tensor = files.tensor(full)
        if tensor.shape != param.shape:
            raise FormatError(f"{files.root}: tensor {full!r} has shape {tuple(tensor.shape)}, the model "
                              f"expects {tuple(param.shape)}")
        value = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        owner, leaf = _module_for(root, name)
        owner._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
    for name, buf in list(root.named_buffers()):
        if files.has(prefix + name):
            owner, leaf = _module_for(root, name)
            owner._buffers[leaf] = files.tensor(prefix + name).to(device=device, dtype=buf.dtype)
    return missing


def check_blocks_readable(files: ModelFiles, model: torch.nn.Module, block_prefix: str) -> None:
    """Fail before any work when block 0's parameters are not stored under the names they have in memory.

    transformers 5 converts some checkpoints while loading them: an MoE block's per-expert matrices
    (``block_sparse_moe.experts.N.w1.weight`` on disk) become one fused ``mlp.experts.gate_up_proj``.
    The block reader does not reproduce those conversions, and SignRound has to run the whole block.
    """
    prefix = f"{block_prefix}.0."
    block = model.get_submodule(block_prefix)[0]
    absent = [prefix + name for name, _ in block.named_parameters() if not files.has(prefix + name)]
    if absent:
        raise FormatError(
            f"{files.root}: {len(absent)} of decoder block 0's tensors are not in the checkpoint under the names "
            f"transformers gives them in memory (e.g. {absent[0]!r}; transformers converts them while loading, as "
            f"it does for fused MoE experts), so SignRound cannot run this model's blocks; --iters 0 (RTN) "
            f"quantizes its Linear layers and copies every other tensor unchanged")


class BlockSource:
    """The model's decoder blocks, materialized one at a time from its safetensors."""

    def __init__(self, files: ModelFiles, plan: QuantPlan) -> None:
        self.files = files
        self.plan = plan
        self.model = meta_model(files.config)
        self.model.eval()
        self.layers = self.model.get_submodule(plan.block_prefix)
        self._meta_blocks: list[torch.nn.Module | None] = list(self.layers)

    @torch.no_grad()
    def capture(self, tokens: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, list[BlockCall]]:
        """First-block hidden states ``[n, seqlen, hidden]`` (CPU, ``dtype``) and every block's other
        arguments, from one model forward per sample (batch 1) on the CPU."""
        sink: dict[str, Any] = {"calls": {}, "hidden": []}
        count = len(self._meta_blocks)
        for i in range(count):
            self.layers[i] = _Recorder(i, sink, last=i == count - 1)
        try:
            missing = _materialize(self.model, self.files, "", dtype, torch.device("cpu"),
                                   getattr(self.model, "_init_weights", None), required=False,
                                   skip=self._output_head_names())
            for row in tokens:
                try:
                    self.model(input_ids=row[None], use_cache=False)
                except _StopForward:
                    pass
                except (NotImplementedError, RuntimeError) as exc:
                    if "meta" in str(exc) and missing:
                        raise FormatError(f"{self.files.root}: the model needs tensors the checkpoint lacks: "
                                          f"{missing}") from None
                    raise
        finally:
            for i, block in enumerate(self._meta_blocks):
                self.layers[i] = block if block is not None else torch.nn.Identity()
        hidden = torch.cat(sink["hidden"], dim=0)
        if not torch.isfinite(hidden).all():
            raise FormatError(f"{self.files.root}: the first block's inputs are not finite (check the "
                              f"embedding weights)")
        calls = [sink["calls"][i] for i in range(count)]
        for call in calls:
            call.kwargs["use_cache"] = False
            call.kwargs.pop("past_key_values", None)
            call.kwargs.pop("past_key_value", None)
        return hidden.to(dtype), calls

    def _output_head_names(self) -> frozenset[str]:
        """The LM head's parameters, unless tied to the input embedding: capture never reaches them."""
        head = self.model.get_output_embeddings()
        embed = self.model.get_input_embeddings()
        if head is None or getattr(head, "weight", None) is None or head.weight is getattr(embed, "weight", None):
            return frozenset()
        return frozenset(n for n, p in self.model.named_parameters() if p is head.weight)

    def block(self, index: int, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        """Block ``index`` with its checkpoint weights (floating ones in ``dtype``) on ``device``."""
        block = self._meta_blocks[index]
        if block is None:
            raise RuntimeError(f"block {index} was already materialized")
        self._meta_blocks[index] = None
        _materialize(block, self.files, f"{self.plan.block_prefix}.{index}.", dtype, device,
                     getattr(self.model, "_init_weights", None), required=True)
        block.requires_grad_(False)
        return block

    def release(self, index: int) -> None:
        """Free block ``index`` once it is done: out of the model's layer list, and its tensors emptied."""
        block = self.layers[index]
        self.layers[index] = torch.nn.Identity()
        drop_tensors(block)


def drop_tensors(module: torch.nn.Module) -> None:
    """Empty every parameter and buffer of ``module`` in place (the objects stay, their storage goes).

    A finished block or tuned layer then holds no device memory even where a reference to it survives
    (the model's layer list held every finished block: one block's weights more on the GPU per block).
    Tensors taken from it before (``detach()``) keep their own reference to the storage.
    """
    for tensor in [*module.parameters(), *module.buffers()]:
        tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)


def block_output(result: Any) -> torch.Tensor:
    """A decoder layer's hidden-states output (older layers return a tuple)."""
    return result[0] if isinstance(result, (tuple, list)) else result
