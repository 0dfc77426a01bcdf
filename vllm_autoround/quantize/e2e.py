"""End-to-end tuning of scales (and optionally codes), after SignRound has written every layer.

SignRound tunes each block against that block's own full-precision output, so errors that are small per
block but compound through the model stay uncorrected. This stage tunes the scales of every quantized
layer, all at once, to bring the quantized model's next-token distribution back towards the
full-precision model's on the calibration tokens (KL divergence per token). With ``code_lr > 0`` it also
lets every integer code move, by SignRound's own rule (a rounding offset trained by signed gradient
descent), now against the whole model's output. Zero points stay as written, and so do the checkpoint's
layout and every kernel that serves it.

Unlike the block-wise tuner it holds the whole model on the device twice (the full-precision teacher and
the student) plus one batch's activations for the backward pass; ``--e2e_batch_size`` bounds the latter.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vllm_autoround.format.errors import FormatError
from vllm_autoround.format.tensors import SCALE_DTYPE, TENSOR_SUFFIXES, PackedLinear, pack_linear, unpack_linear
from vllm_autoround.quantize.model_files import ModelFiles
from vllm_autoround.quantize.plan import LinearLayer, QuantPlan
from vllm_autoround.quantize.rtn import REST_UNIT, block_unit
from vllm_autoround.quantize.writer import CheckpointWriter

STAGE = "e2e_scales"
KL_CHUNK_TOKENS = 2048


class ScaledCodesLinear(torch.nn.Module):
    """``y = x · ((codes - zeros) · scales · (1 + factor))ᵀ``: only ``factor`` is trained.

    A relative factor lets one learning rate move every scale by the same fraction, whatever its size.
    """

    def __init__(self, packed: PackedLinear, group_size: int, bias: torch.Tensor | None,
                 dtype: torch.dtype) -> None:
        super().__init__()
        k, n = packed.codes.shape
        self.shape = (k // group_size, group_size, n)
        self.register_buffer("zeros", packed.zeros.float().unsqueeze(1))
        centred = packed.codes.view(self.shape).float() - self.zeros
        self.register_buffer("centred", centred.to(dtype))  # integers below 2**9: exact in bf16
        self.register_buffer("base_scales", packed.scales.float())
        self.factor = torch.nn.Parameter(torch.zeros_like(self.base_scales))
        self.bias = bias
        self.dtype = dtype

    def scales(self) -> torch.Tensor:
        return self.base_scales * (1 + self.factor)

    def centred_codes(self) -> torch.Tensor:
        return self.centred.float()

    def codes(self) -> torch.Tensor:
        """The current integer codes, ``[K, N]``."""
        with torch.no_grad():
            return (self.centred_codes() + self.zeros).round().to(torch.uint8).flatten(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, gs, n = self.shape
        weight = (self.centred_codes() * self.scales().unsqueeze(1)).reshape(g * gs, n).t()
        return F.linear(x, weight.to(self.dtype), self.bias)


class RoundedCodesLinear(ScaledCodesLinear):
    """As :class:`ScaledCodesLinear`, and the codes are ``round(w / s + zeros + offset)`` of the original
    weight ``w`` with a trained ``offset``: SignRound's rounding rule, here against the model's output.

    The offset starts where every written code sits in the middle of its rounding interval, so before
    any step the layer computes exactly what was written, and a code flips only after the gradient has
    pointed the same way for steps adding up to half a code (what SignRound chose is the prior). Scales
    ``s`` here are the written ones; the trained factor scales the result.
    """

    def __init__(self, packed: PackedLinear, group_size: int, bias: torch.Tensor | None, dtype: torch.dtype,
                 weight: torch.Tensor) -> None:
        super().__init__(packed, group_size, bias, dtype)
        del self.centred
        self.qmax = 2 ** packed.scheme.bits - 1
        position = weight.t().float().reshape(self.shape) / self.base_scales.unsqueeze(1) + self.zeros
        self.register_buffer("position", position)
        self.offset = torch.nn.Parameter(packed.codes.view(self.shape).float() - position)

    def centred_codes(self) -> torch.Tensor:
        moved = self.position + self.offset
        rounded = moved + (moved.round() - moved).detach()  # straight-through rounding, as SignRound's
        return rounded.clamp(0, self.qmax) - self.zeros


def kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher ‖ student), in float32, a chunk of tokens at a time to bound memory."""
    s, t = student_logits.flatten(0, 1), teacher_logits.flatten(0, 1)
    total = s.new_zeros((), dtype=torch.float32)
    for i in range(0, s.shape[0], KL_CHUNK_TOKENS):
        total = total + F.kl_div(F.log_softmax(s[i:i + KL_CHUNK_TOKENS].float(), -1),
                                 F.log_softmax(t[i:i + KL_CHUNK_TOKENS].float(), -1),
                                 log_target=True, reduction="sum")
    return total / s.shape[0]


def layer_units(plan: QuantPlan) -> dict[str, tuple[str, LinearLayer]]:
    """Every quantized layer of the plan → (the unit its tensors are written in, the layer)."""
    out = {}
    for i, layers in enumerate(plan.blocks):
        out.update({layer.name: (block_unit(i), layer) for layer in layers if layer.scheme.quantized})
    out.update({layer.name: (REST_UNIT, layer) for layer in plan.extra if layer.scheme.quantized})
    return out


def install_student(model: torch.nn.Module, writer: CheckpointWriter, plan: QuantPlan, device: torch.device,
                    dtype: torch.dtype, tune_codes: bool = False) -> dict[str, ScaledCodesLinear]:
    """Swap every quantized linear of ``model`` for one built from its written unit.

    With ``tune_codes`` the swapped-in layer keeps the original weight to round afresh
    (:class:`RoundedCodesLinear`); otherwise its codes are fixed (:class:`ScaledCodesLinear`).
    """
    offset = plan.quant_config().zero_point_offset
    students: dict[str, ScaledCodesLinear] = {}
    cache: dict[str, dict[str, torch.Tensor]] = {}
    for name, (unit, layer) in layer_units(plan).items():
        if unit not in cache:
            cache.clear()
            cache[unit] = writer.read_unit(unit)
        tensors = {suffix: cache[unit][f"{name}.{suffix}"] for suffix in TENSOR_SUFFIXES
                   if f"{name}.{suffix}" in cache[unit]}
        packed = unpack_linear(tensors, layer.scheme, offset, name)
        packed = PackedLinear(packed.codes.to(device), packed.scales.to(device), packed.zeros.to(device),
                              packed.scheme)
        parent_name, _, child = name.rpartition(".")
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise FormatError(f"{name}: quantized in the checkpoint but not a module of the model") from None
        group_size = layer.scheme.effective_group_size(packed.in_features)
        student = (RoundedCodesLinear(packed, group_size, old.bias, dtype, old.weight) if tune_codes
                   else ScaledCodesLinear(packed, group_size, old.bias, dtype))
        setattr(model.get_submodule(parent_name) if parent_name else model, child, student)
        students[name] = student
    return students


def signed_step(offsets: list[torch.Tensor], lr: float) -> None:
    """SignRound's update: every offset moves by ``lr`` against the sign of its gradient."""
    with torch.no_grad():
        for offset in offsets:
            if offset.grad is not None:
                offset.sub_(lr * offset.grad.sign())
                offset.grad = None


def train_scales(files: ModelFiles, plan: QuantPlan, writer: CheckpointWriter, tokens: torch.Tensor,
                 epochs: int, lr: float, batch_size: int, device: torch.device, seed: int,
                 dtype: torch.dtype | None = None, code_lr: float = 0.0,
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Distil the written checkpoint towards the original model; its tuned tensors and a report.

    The tensors are ``NAME.scales`` for every quantized layer and, with ``code_lr > 0``, ``NAME.codes``
    (``[K, N]`` uint8) too. Models run in ``dtype``: by default bf16 on CUDA (as the block-wise tuner's
    autocast), float32 elsewhere. Both learning rates follow one cosine schedule.
    """
    from vllm_autoround.quantize.evaluate import load_model

    started = time.monotonic()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    teacher = load_model(files.root, device, dtype)
    student = load_model(files.root, device, dtype)
    for param in list(teacher.parameters()) + list(student.parameters()):
        param.requires_grad_(False)
    layers = install_student(student, writer, plan, device, dtype, tune_codes=code_lr > 0)
    written_codes = {name: layer.codes().cpu() for name, layer in layers.items()} if code_lr > 0 else {}
    offsets = [layer.offset for layer in layers.values() if isinstance(layer, RoundedCodesLinear)]
    batches = math.ceil(tokens.shape[0] / batch_size)
    optimizer = torch.optim.Adam([layer.factor for layer in layers.values()], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * batches)
    generator = torch.Generator().manual_seed(seed)
    epoch_kl: list[float] = []
    bar = tqdm(total=epochs * batches, desc="end-to-end scales" + (" and codes" if offsets else ""), unit="step")
    for _ in range(epochs):
        order = torch.randperm(tokens.shape[0], generator=generator)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, tokens.shape[0], batch_size):
            ids = tokens[order[start:start + batch_size]].to(device)
            with torch.no_grad():
                target = teacher(input_ids=ids, use_cache=False).logits
            loss = kl_per_token(student(input_ids=ids, use_cache=False).logits, target)
            loss.backward()
            signed_step(offsets, code_lr * schedule.get_last_lr()[0] / lr)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            total += loss.detach()
            bar.update()
        epoch_kl.append(total.item() / batches)
        bar.set_postfix_str(f"KL {epoch_kl[-1]:.4g}")
    bar.close()
    with torch.no_grad():
        tuned = {f"{name}.scales": layer.scales().to(SCALE_DTYPE).cpu() for name, layer in layers.items()}
        shift = max((layer.factor.abs().max().item() for layer in layers.values()), default=0.0)
        if offsets:
            codes = {name: layer.codes().cpu() for name, layer in layers.items()}
            tuned.update({f"{name}.codes": c for name, c in codes.items()})
            changed = sum(int((codes[name] != written_codes[name]).sum()) for name in codes)
    report = {"epochs": epochs, "lr": lr, "code_lr": code_lr, "batch_size": batch_size,
              "sequences": tokens.shape[0], "steps": epochs * batches, "layers": len(layers),
              "kl_per_epoch": [float(f"{x:.6g}") for x in epoch_kl], "max_relative_change": round(shift, 4),
              "seconds": round(time.monotonic() - started, 3)}
    if offsets:
        report["codes_changed"] = round(changed / sum(c.numel() for c in written_codes.values()), 6)
    bad = [name for name, s in tuned.items()
           if name.endswith(".scales") and (not bool(torch.isfinite(s).all()) or bool((s == 0).any()))]
    if bad or not all(math.isfinite(x) for x in epoch_kl):
        report["discarded"] = f"non-finite or zero scales in {len(bad)} layers (e.g. {bad[:1]}); SignRound's kept"
        tuned = {}
    del teacher, student, layers, optimizer, offsets
    return tuned, report


def refuse_to_drop_saved_stage(writer: CheckpointWriter) -> None:
    """A resume without the stage, after it saved its scales, would publish some shards tuned and some not."""
    saved = writer.stage_info(STAGE)
    if saved is not None:
        raise FormatError(f"{writer.partial}: the interrupted run already tuned scales end to end (epochs "
                          f"{saved.get('epochs')}, lr {saved.get('lr')}) and may have written some of them; "
                          f"resume with --e2e_epochs {saved.get('epochs')} --e2e_lr {saved.get('lr')}")


def tune_scales_end_to_end(files: ModelFiles, plan: QuantPlan, writer: CheckpointWriter, tokens: torch.Tensor,
                           epochs: int, lr: float, batch_size: int, device: str, seed: int,
                           code_lr: float = 0.0) -> dict[str, Any]:
    """Tune, then rewrite every unit with the tuned scales (and codes); resumable at every step.

    The tuned tensors are saved as one stage file before any unit is rewritten, and each rewritten unit is
    marked, so a run killed part-way through the rewrite finishes it on ``--resume`` without training again.
    """
    batch_size = min(batch_size, tokens.shape[0])
    wanted = {"epochs": epochs, "lr": lr, "code_lr": code_lr, "batch_size": batch_size,
              "sequences": tokens.shape[0]}
    saved = writer.read_stage(STAGE)
    if saved is None:
        try:
            tuned, report = train_scales(files, plan, writer, tokens, epochs, lr, batch_size, torch.device(device),
                                         seed, code_lr=code_lr)
        except torch.OutOfMemoryError as exc:
            raise ValueError(f"end-to-end scale tuning ran out of device memory ({str(exc).splitlines()[0]}); the "
                             f"SignRound result is kept in {writer.partial}: rerun with --resume and a smaller "
                             f"--e2e_batch_size, or --e2e_epochs 0") from None
        writer.save_stage(STAGE, tuned, report)
    else:
        tuned, report = saved
        if {k: report.get(k) for k in wanted} != wanted:
            raise FormatError(f"{writer.partial}: the interrupted run tuned scales end to end with "
                              f"{ {k: report.get(k) for k in wanted} }, not {wanted}; resume with those settings")
        report = dict(report, resumed=True)
    rewrite_units(plan, writer, tuned)
    return report


def rewrite_units(plan: QuantPlan, writer: CheckpointWriter, tuned: dict[str, torch.Tensor]) -> None:
    """Put the tuned scales (and codes, repacked) into every unit not yet marked as rewritten."""
    offset = plan.quant_config().zero_point_offset
    by_unit: dict[str, list[tuple[str, LinearLayer]]] = {}
    for name, (unit, layer) in layer_units(plan).items():
        if f"{name}.scales" in tuned:
            by_unit.setdefault(unit, []).append((name, layer))
    for unit, layers in by_unit.items():
        info = writer.unit_info(unit)
        if info.get(STAGE):
            continue
        tensors = writer.read_unit(unit)
        for name, layer in layers:
            scales = tuned[f"{name}.scales"]
            if tensors[f"{name}.scales"].shape != scales.shape:
                raise FormatError(f"{name}.scales: tuned shape {tuple(scales.shape)} does not match the "
                                  f"written {tuple(tensors[f'{name}.scales'].shape)}")
            tensors[f"{name}.scales"] = scales
            if f"{name}.codes" in tuned:
                written = unpack_linear({s: tensors[f"{name}.{s}"] for s in TENSOR_SUFFIXES
                                         if f"{name}.{s}" in tensors}, layer.scheme, offset, name)
                repacked = pack_linear(PackedLinear(tuned[f"{name}.codes"], scales, written.zeros, layer.scheme),
                                       offset)
                tensors[f"{name}.qweight"] = repacked["qweight"]
        writer.write_unit(unit, tensors, dict(info, **{STAGE: True}))
