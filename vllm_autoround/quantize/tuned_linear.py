"""A linear layer whose weight is fake-quantized with trainable SignRound parameters.

:func:`fake_quant` is :func:`vllm_autoround.quantize.qdq.fake_quantize` (auto-round 0.16.1's integer
math, same ops, same straight-through gradients) restated for the tuning loop: the per-group min/max
of the weight are constants computed once per layer instead of every step, the arithmetic is float32
whatever the weight's dtype (so that packing with ``quantize_to_codes`` gives the same codes), and the
result comes out in the matmul dtype (bf16 under autocast) from the same pass. On CUDA it is compiled,
so the forward and backward are each a couple of fused kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_autoround.format.schema import LayerScheme
from vllm_autoround.quantize.qdq import params_from_range, round_ste

V_BOUND = 0.5  # rounding offsets live in [-0.5, 0.5]
MINMAX_BOUNDS = (0.5, 1.0)  # min/max clipping scales live in [0.5, 1]


def fake_quant(
    weight: torch.Tensor,
    v: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    wmin: torch.Tensor,
    wmax: torch.Tensor,
    bits: int,
    sym: bool,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Quantize-dequantize ``weight [N, K]`` given ``v [N, K]``, ``alpha/beta/wmin/wmax [N, G]``."""
    n, k = weight.shape
    groups = wmin.shape[1]
    grouped = weight.to(torch.float32).reshape(n, groups, k // groups)
    maxq = 2**bits - 1
    scale, zero = params_from_range(wmin.to(torch.float32), wmax.to(torch.float32), bits, sym, alpha, beta)
    scale = scale.unsqueeze(-1)
    zero = zero.unsqueeze(-1)
    codes = torch.clamp(round_ste(grouped / scale + v.reshape(n, groups, k // groups)) + zero, 0, maxq)
    return ((codes - zero) * scale).reshape(n, k).to(out_dtype)


def weight_range(weight: torch.Tensor, scheme: LayerScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group ``min(w, 0)`` and ``max(w, 0)`` as ``[N, G]`` float32: the constants of :func:`fake_quant`."""
    n, k = weight.shape
    grouped = weight.to(torch.float32).reshape(n, scheme.groups(k), scheme.effective_group_size(k))
    return grouped.amin(-1).clamp(max=0), grouped.amax(-1).clamp(min=0)


class TunedLinear(torch.nn.Module):
    """Stands in for an ``nn.Linear`` while its block is tuned; ``v``, ``alpha``, ``beta`` are trainable."""

    def __init__(self, linear: torch.nn.Linear, scheme: LayerScheme, out_dtype: torch.dtype, quant_fn=fake_quant):
        super().__init__()
        weight = linear.weight.detach()
        n, k = weight.shape
        groups = scheme.groups(k)
        self.scheme = scheme
        self.out_dtype = out_dtype
        self.quant_fn = quant_fn
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)
        wmin, wmax = weight_range(weight, scheme)
        self.register_buffer("wmin", wmin, persistent=False)
        self.register_buffer("wmax", wmax, persistent=False)
        self.v = torch.nn.Parameter(torch.zeros(n, k, dtype=torch.float32, device=weight.device))
        self.alpha = torch.nn.Parameter(torch.ones(n, groups, dtype=torch.float32, device=weight.device))
        self.beta = torch.nn.Parameter(torch.ones(n, groups, dtype=torch.float32, device=weight.device))

    def quantized_weight(self) -> torch.Tensor:
        return self.quant_fn(self.weight, self.v, self.alpha, self.beta, self.wmin, self.wmax,
                             self.scheme.bits, self.scheme.sym, self.out_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)
