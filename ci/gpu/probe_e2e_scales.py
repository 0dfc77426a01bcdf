"""Probe: after SignRound, tune every quantized layer's scales end to end, codes and zero points fixed.

The student is the model with each packed linear's weight rebuilt as ``(codes - zeros) * scales`` with the
scales trainable (float32); it is distilled towards the full-precision model's next-token distribution on
the calibration tokens (KL per token). The checkpoint's layout is unchanged by this, only its scales, so a
tuned checkpoint would serve on the same kernels. Prints held-out perplexity before and after, per epoch.

    python ci/gpu/probe_e2e_scales.py --model /tmp/acc/smollm2 --checkpoint /tmp/q/w4 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vllm_autoround.format.packing import unpack_codes_and_zeros  # noqa: E402
from vllm_autoround.format.schema import load_quant_config  # noqa: E402
from vllm_autoround.quantize.calibration import calibration_tokens, load_tokenizer  # noqa: E402
from vllm_autoround.quantize.evaluate import heldout_windows, load_model, perplexity  # noqa: E402
from vllm_autoround.quantize.model_files import ModelFiles  # noqa: E402


class ScaledCodesLinear(torch.nn.Module):
    """y = x · ((codes - zeros) * scales * (1 + factor))ᵀ with the factor trainable."""

    def __init__(self, codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        k, n = codes.shape
        gs = k if group_size == -1 else group_size
        centred = codes.view(k // gs, gs, n).float() - zeros.float().unsqueeze(1)
        self.register_buffer("centred", centred.to(dtype))  # small integers: exact in bf16
        self.register_buffer("base_scales", scales.float().clone())
        # a relative factor, so that one Adam learning rate moves every scale by the same fraction
        self.factor = torch.nn.Parameter(torch.zeros_like(self.base_scales))
        self.bias = bias
        self.dtype = dtype

    def weight_nk(self) -> torch.Tensor:
        g, gs, n = self.centred.shape
        scales = self.base_scales * (1 + self.factor)
        return (self.centred.float() * scales.unsqueeze(1)).reshape(g * gs, n).t().to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_nk(), self.bias)


def install_student_layers(model: torch.nn.Module, checkpoint: Path, device: str, dtype: torch.dtype
                           ) -> list[torch.nn.Parameter]:
    """Replace every packed linear of ``checkpoint`` in ``model``; the trainable factors."""
    config = load_quant_config(checkpoint)
    files = ModelFiles(checkpoint)
    scales = []
    for name in files.names():
        if not name.endswith(".qweight"):
            continue
        layer = name.removesuffix(".qweight")
        scheme = config.scheme_for(layer)
        codes, zeros = unpack_codes_and_zeros(files.tensor(name), files.tensor(f"{layer}.qzeros"), scheme.bits,
                                              config.zero_point_offset)
        parent_name, _, child = layer.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        new = ScaledCodesLinear(codes.to(device), zeros.to(device), files.tensor(f"{layer}.scales").to(device),
                                scheme.group_size, old.bias, dtype)
        setattr(parent, child, new)
        scales.append(new.factor)
    return scales


def float_masters(model: torch.nn.Module, dtype: torch.dtype) -> list[torch.nn.Parameter]:
    """Make every RMSNorm gain trainable through a float32 master that each forward casts to ``dtype``."""
    masters = []
    for name, module in model.named_modules():
        if name.endswith("norm") and isinstance(getattr(module, "weight", None), torch.nn.Parameter):
            master = torch.nn.Parameter(module.weight.detach().float())
            del module.weight
            module.weight_master = master
            module.register_forward_pre_hook(lambda m, _: setattr(m, "weight", m.weight_master.to(dtype)))
            masters.append(master)
    return masters


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Mean over tokens of KL(teacher ‖ student), in float32 and in chunks of tokens to bound memory."""
    s, t = student_logits.flatten(0, 1), teacher_logits.flatten(0, 1)
    total = s.new_zeros((), dtype=torch.float32)
    for i in range(0, s.shape[0], chunk):
        ls = F.log_softmax(s[i:i + chunk].float(), -1)
        lt = F.log_softmax(t[i:i + chunk].float(), -1)
        total = total + F.kl_div(ls, lt, log_target=True, reduction="sum")
    return total / s.shape[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate, relative to each scale")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--eval_samples", type=int)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--train_norms", action="store_true", help="also tune the RMSNorm gains (kept in bf16)")
    p.add_argument("--results", help="JSON file to write the figures to")
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(a.seed)
    tok = load_tokenizer(a.model)
    tokens = calibration_tokens(tok, None, a.nsamples, a.seqlen, a.seed)
    windows = heldout_windows(tok, 2048, a.eval_samples)
    teacher = load_model(a.model, device, dtype)
    student = load_model(a.model, device, dtype)
    for param in student.parameters():
        param.requires_grad_(False)
    factors = install_student_layers(student, Path(a.checkpoint), device, dtype)
    norms = float_masters(student, dtype) if a.train_norms else []
    figures = {"bf16": perplexity(teacher, windows, 4), "epochs": []}
    figures["before"] = perplexity(student, windows, 4)
    print(f"bf16 {figures['bf16']:.3f}, quantized before {figures['before']:.3f}", flush=True)
    opt = torch.optim.Adam(factors + norms, lr=a.lr)
    batches = math.ceil(a.nsamples / a.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs * batches)
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(a.nsamples)
        total = 0.0
        for start in range(0, a.nsamples, a.batch_size):
            ids = tokens[order[start:start + a.batch_size]].to(device)
            with torch.no_grad():
                target = teacher(input_ids=ids, use_cache=False).logits
            loss = kl_loss(student(input_ids=ids, use_cache=False).logits, target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            total += loss.item()
        ppl = perplexity(student, windows, 4)
        shift = max(f.detach().abs().max().item() for f in factors)
        row = {"epoch": epoch + 1, "train_kl": total / batches, "ppl": ppl,
               "seconds": round(time.perf_counter() - t0, 1), "max_rel_shift": shift}
        figures["epochs"].append(row)
        print(json.dumps(row), flush=True)
    if a.results:
        Path(a.results).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
