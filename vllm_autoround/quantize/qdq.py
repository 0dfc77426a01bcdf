"""Quantize-dequantize math for one weight, shared by RTN and the SignRound tuner.

It is auto-round 0.16.1's integer scheme, so that at ``v = 0, alpha = beta = 1`` both tools agree:

* sym ("full range"): ``s = ±max(|min|, |max|) / 2**(b-1)`` signed toward the larger side,
  ``q = clamp(round(w/s + v), -2**(b-1), 2**(b-1)-1)``, stored as ``q + 2**(b-1)``.
* asym: ``s = (max·beta - min·alpha) / (2**b - 1)`` over the group's range widened to include 0,
  ``z = round(-min·alpha / s)``, ``q = clamp(round(w/s + v) + z, 0, 2**b - 1)``.

``alpha``/``beta`` scale the min/max (the tuner's clipping parameters), ``v`` offsets the rounding.
Scales are rounded to float16 because that is what the checkpoint stores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_autoround.format.schema import LayerScheme
from vllm_autoround.format.tensors import PackedLinear

SCALE_EPS = 1e-5


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round forward, identity backward (straight-through estimator)."""
    return (x.round() - x).detach() + x


@dataclass
class QuantParams:
    """Per-group scale and zero point of one ``[N, K]`` weight, shaped ``[N, G, 1]``."""

    scale: torch.Tensor
    zero: torch.Tensor


def group_view(weight: torch.Tensor, scheme: LayerScheme) -> torch.Tensor:
    """``[N, K]`` → ``[N, G, group]``."""
    n, k = weight.shape
    gs = scheme.effective_group_size(k)
    return weight.reshape(n, k // gs, gs)


def params_from_range(
    wmin: torch.Tensor,
    wmax: torch.Tensor,
    bits: int,
    sym: bool,
    alpha: torch.Tensor | float = 1.0,
    beta: torch.Tensor | float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, G]`` scale and zero point from the per-group ``min(w, 0)`` and ``max(w, 0)``."""
    if sym:
        half = 2 ** (bits - 1)
        neg = -(wmin * alpha)
        pos = wmax * beta
        # The larger side always maps to code -2**(b-1): the scale is negative when max dominates.
        signed_max = torch.where(pos < neg, neg, -pos)
        scale = _clamp_scale((signed_max / half).to(torch.float16).to(wmin.dtype))
        return scale, torch.full_like(scale, float(half))
    lo = wmin * alpha
    hi = wmax * beta
    scale = _clamp_scale(((hi - lo) / (2**bits - 1)).to(torch.float16).to(wmin.dtype))
    return scale, round_ste(-lo / scale)


def compute_params(
    grouped: torch.Tensor,
    scheme: LayerScheme,
    alpha: torch.Tensor | float = 1.0,
    beta: torch.Tensor | float = 1.0,
) -> QuantParams:
    """Scale and zero point from a grouped weight ``[N, G, group]``; ``alpha``/``beta`` are ``[N, G]``."""
    wmin = grouped.amin(-1).clamp(max=0)
    wmax = grouped.amax(-1).clamp(min=0)
    scale, zero = params_from_range(wmin, wmax, scheme.bits, scheme.sym, alpha, beta)
    return QuantParams(scale=scale.unsqueeze(-1), zero=zero.unsqueeze(-1))


def _clamp_scale(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale < 0, scale.clamp(max=-SCALE_EPS), scale.clamp(min=SCALE_EPS))


def fake_quantize(
    weight: torch.Tensor,
    scheme: LayerScheme,
    v: torch.Tensor | float = 0.0,
    alpha: torch.Tensor | float = 1.0,
    beta: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Differentiable quantize-dequantize of ``[N, K]``; ``v`` is ``[N, K]``, alpha/beta ``[N, G]``."""
    grouped = group_view(weight, scheme)
    params = compute_params(grouped, scheme, alpha, beta)
    v_grouped = group_view(v, scheme) if isinstance(v, torch.Tensor) else v
    codes = _codes(grouped, params, scheme, v_grouped)
    return ((codes - params.zero) * params.scale).reshape(weight.shape)


def _codes(grouped: torch.Tensor, params: QuantParams, scheme: LayerScheme, v) -> torch.Tensor:
    maxq = 2**scheme.bits - 1
    return torch.clamp(round_ste(grouped / params.scale + v) + params.zero, 0, maxq)


@torch.no_grad()
def quantize_to_codes(
    weight: torch.Tensor,
    scheme: LayerScheme,
    v: torch.Tensor | float = 0.0,
    alpha: torch.Tensor | float = 1.0,
    beta: torch.Tensor | float = 1.0,
) -> PackedLinear:
    """Integer codes, scales and zero points of ``[N, K]``, ready for :func:`format.pack_linear`."""
    weight = weight.to(torch.float32)
    grouped = group_view(weight, scheme)
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.to(torch.float32)
    if isinstance(beta, torch.Tensor):
        beta = beta.to(torch.float32)
    params = compute_params(grouped, scheme, alpha, beta)
    v_grouped = group_view(v.to(torch.float32), scheme) if isinstance(v, torch.Tensor) else v
    codes = _codes(grouped, params, scheme, v_grouped).round().to(torch.int32)
    n, k = weight.shape
    return PackedLinear(
        codes=codes.reshape(n, k).t().contiguous(),
        scales=params.scale.squeeze(-1).t().to(torch.float16).contiguous(),
        zeros=params.zero.squeeze(-1).t().round().to(torch.int32).contiguous(),
        scheme=scheme,
    )
