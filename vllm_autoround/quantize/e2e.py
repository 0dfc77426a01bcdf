"""End-to-end scale tuning, after SignRound has fixed every layer's integer codes.

SignRound tunes each block against that block's own full-precision output, so errors that are small per
block but compound through the model stay uncorrected. This stage tunes only the scales of every
quantized layer, all at once, to bring the quantized model's next-token distribution back towards the
full-precision model's on the calibration tokens (KL divergence per token). Codes and zero points stay as
SignRound chose them, so the checkpoint's layout, and every kernel that serves it, is unchanged.

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
from vllm_autoround.format.tensors import SCALE_DTYPE, TENSOR_SUFFIXES, unpack_linear
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

    def __init__(self, codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        k, n = codes.shape
        centred = codes.view(k // group_size, group_size, n).float() - zeros.float().unsqueeze(1)
        self.register_buffer("centred", centred.to(dtype))  # integers below 2**9: exact in bf16
        self.register_buffer("base_scales", scales.float())
        self.factor = torch.nn.Parameter(torch.zeros_like(self.base_scales))
        self.bias = bias
        self.dtype = dtype

    def scales(self) -> torch.Tensor:
        return self.base_scales * (1 + self.factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, gs, n = self.centred.shape
        weight = (self.centred.float() * self.scales().unsqueeze(1)).reshape(g * gs, n).t()
        return F.linear(x, weight.to(self.dtype), self.bias)


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
                    dtype: torch.dtype) -> dict[str, ScaledCodesLinear]:
    """Swap every quantized linear of ``model`` for a :class:`ScaledCodesLinear` built from its written unit."""
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
        parent_name, _, child = name.rpartition(".")
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise FormatError(f"{name}: quantized in the checkpoint but not a module of the model") from None
        student = ScaledCodesLinear(packed.codes.to(device), packed.zeros.to(device), packed.scales.to(device),
                                    layer.scheme.effective_group_size(packed.in_features), old.bias, dtype)
        setattr(model.get_submodule(parent_name) if parent_name else model, child, student)
        students[name] = student
    return students


def train_scales(files: ModelFiles, plan: QuantPlan, writer: CheckpointWriter, tokens: torch.Tensor,
                 epochs: int, lr: float, batch_size: int, device: torch.device, seed: int,
                 dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Distil the written checkpoint towards the original model; its tuned scales and a report.

    Models run in ``dtype``: by default bf16 on CUDA (as the block-wise tuner's autocast), float32 elsewhere.
    """
    from vllm_autoround.quantize.evaluate import load_model

    started = time.monotonic()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    teacher = load_model(files.root, device, dtype)
    student = load_model(files.root, device, dtype)
    for param in list(teacher.parameters()) + list(student.parameters()):
        param.requires_grad_(False)
    layers = install_student(student, writer, plan, device, dtype)
    factors = [layer.factor for layer in layers.values()]
    batches = math.ceil(tokens.shape[0] / batch_size)
    optimizer = torch.optim.Adam(factors, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * batches)
    generator = torch.Generator().manual_seed(seed)
    epoch_kl: list[float] = []
    bar = tqdm(total=epochs * batches, desc="end-to-end scales", unit="step")
    for _ in range(epochs):
        order = torch.randperm(tokens.shape[0], generator=generator)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, tokens.shape[0], batch_size):
            ids = tokens[order[start:start + batch_size]].to(device)
            with torch.no_grad():
                target = teacher(input_ids=ids, use_cache=False).logits
            loss = kl_per_token(student(input_ids=ids, use_cache=False).logits, target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            total += loss.detach()
            bar.update()
        epoch_kl.append(total.item() / batches)
        bar.set_postfix_str(f"KL {epoch_kl[-1]:.4g}")
    bar.close()
    with torch.no_grad():
        scales = {name: layer.scales().to(SCALE_DTYPE).cpu() for name, layer in layers.items()}
        shift = max((layer.factor.abs().max().item() for layer in layers.values()), default=0.0)
    report = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "sequences": tokens.shape[0],
              "steps": epochs * batches, "layers": len(layers), "kl_per_epoch": [float(f"{x:.6g}") for x in epoch_kl],
              "max_relative_change": round(shift, 4), "seconds": round(time.monotonic() - started, 3)}
    bad = [name for name, s in scales.items() if not bool(torch.isfinite(s).all()) or bool((s == 0).any())]
    if bad or not all(math.isfinite(x) for x in epoch_kl):
        report["discarded"] = f"non-finite or zero scales in {len(bad)} layers (e.g. {bad[:1]}); SignRound's kept"
        scales = {}
    del teacher, student, layers, optimizer
    return scales, report


def refuse_to_drop_saved_stage(writer: CheckpointWriter) -> None:
    """A resume without the stage, after it saved its scales, would publish some shards tuned and some not."""
    saved = writer.stage_info(STAGE)
    if saved is not None:
        flags = f"--e2e_epochs {saved.get('epochs')} --e2e_lr {saved.get('lr')}"
        if saved.get("sequences") is not None:
            flags += f" --e2e_nsamples {saved['sequences']}"
        raise FormatError(f"{writer.partial}: the interrupted run already tuned scales end to end and may have "
                          f"written some of them; resume with {flags}")


def tune_scales_end_to_end(files: ModelFiles, plan: QuantPlan, writer: CheckpointWriter, tokens: torch.Tensor,
                           epochs: int, lr: float, batch_size: int, device: str, seed: int) -> dict[str, Any]:
    """Tune, then rewrite every unit with the tuned scales; resumable at every step.

    The tuned scales are saved as one stage file before any unit is rewritten, and each rewritten unit is
    marked, so a run killed part-way through the rewrite finishes it on ``--resume`` without training again.
    """
    batch_size = min(batch_size, tokens.shape[0])
    saved = writer.read_stage(STAGE)
    if saved is None:
        try:
            scales, report = train_scales(files, plan, writer, tokens, epochs, lr, batch_size, torch.device(device),
                                          seed)
        except torch.OutOfMemoryError as exc:
            raise ValueError(f"end-to-end scale tuning ran out of device memory ({str(exc).splitlines()[0]}); the "
                             f"SignRound result is kept in {writer.partial}: rerun with --resume and a smaller "
                             f"--e2e_batch_size, or --e2e_epochs 0") from None
        writer.save_stage(STAGE, {f"{name}.scales": s for name, s in scales.items()}, report)
    else:
        tensors, report = saved
        wanted = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "sequences": tokens.shape[0]}
        if {k: report.get(k) for k in wanted} != wanted:
            raise FormatError(f"{writer.partial}: the interrupted run tuned scales end to end with "
                              f"{ {k: report.get(k) for k in wanted} }, not {wanted}; resume with those settings")
        scales = {name.removesuffix(".scales"): s for name, s in tensors.items()}
        report = dict(report, resumed=True)
    by_unit: dict[str, list[str]] = {}
    for name, (unit, _) in layer_units(plan).items():
        if name in scales:
            by_unit.setdefault(unit, []).append(name)
    for unit, names in by_unit.items():
        info = writer.unit_info(unit)
        if info.get(STAGE):
            continue
        tensors = writer.read_unit(unit)
        for name in names:
            if tensors[f"{name}.scales"].shape != scales[name].shape:
                raise FormatError(f"{name}.scales: tuned shape {tuple(scales[name].shape)} does not match the "
                                  f"written {tuple(tensors[f'{name}.scales'].shape)}")
            tensors[f"{name}.scales"] = scales[name]
        writer.write_unit(unit, tensors, dict(info, **{STAGE: True}))
    return report
