"""Tuning presets, named and sized as auto-round's, and how they fill in unset CLI flags."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Recipe:
    iters: int
    nsamples: int
    seqlen: int
    batch_size: int
    lr: float | None = None  # None: 1 / iters
    minmax_lr: float | None = None  # None: same as lr
    e2e_epochs: int = 0  # end-to-end scale tuning after SignRound (quantize/e2e.py); 0 = off
    e2e_lr: float = 3e-3
    e2e_nsamples: int | None = None  # calibration sequences of the end-to-end stage; None: nsamples


RECIPES: dict[str, Recipe] = {
    "default": Recipe(iters=200, nsamples=128, seqlen=2048, batch_size=8),
    "best": Recipe(iters=1000, nsamples=512, seqlen=2048, batch_size=8, e2e_epochs=1),
    "light": Recipe(iters=50, nsamples=128, seqlen=2048, batch_size=8, lr=5e-3),
    "fast": Recipe(iters=200, nsamples=128, seqlen=512, batch_size=4),
    "rtn": Recipe(iters=0, nsamples=0, seqlen=0, batch_size=1),
}


def resolve(recipe: str, **explicit) -> Recipe:
    """The named recipe with every explicitly given (non-None) flag taking precedence."""
    if recipe not in RECIPES:
        raise ValueError(f"--recipe {recipe!r} is unknown; choose one of {sorted(RECIPES)}")
    base = RECIPES[recipe]
    values = {f.name: getattr(base, f.name) for f in fields(Recipe)}
    values.update({k: v for k, v in explicit.items() if v is not None and k in values})
    return Recipe(**values)
