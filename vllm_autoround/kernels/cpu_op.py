"""Registers the CPU GEMM paths as opaque torch ops, with less per-call overhead than ``torch.library.custom_op``.

Why an op: which path runs depends on M, and vLLM's torch.compile would otherwise fix the choice at the M it traces
with. Why not ``custom_op``: it wraps the function in autograd and Dynamo-disable layers that cost about 8 µs per
call, against about 1.5 µs through ``Library.impl`` (dev machine), and one SmolLM2 decode step makes 210 such
calls. These ops are for inference: they have no autograd formula.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_LIB = torch.library.Library("vllm_autoround", "FRAGMENT")


def cpu_op(schema: str, fake: Callable) -> Callable[[Callable], Callable]:
    """Decorator: define ``vllm_autoround::<schema>`` with the function as its CPU kernel and ``fake`` for
    torch.compile's shape propagation; returns the op."""
    name = schema.split("(", 1)[0]

    def register(fn: Callable) -> Callable:
        _LIB.define(schema)
        _LIB.impl(name, fn, "CPU")
        torch.library.register_fake(f"vllm_autoround::{name}", fake, lib=_LIB)
        return getattr(torch.ops.vllm_autoround, name).default

    return register
