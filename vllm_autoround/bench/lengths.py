"""Prompt/output length specs: a fixed number or a seeded distribution, written as one CLI string."""

from __future__ import annotations

import random
from dataclasses import dataclass

_KINDS = {"fixed": 1, "uniform": 2, "normal": 2, "exponential": 1}


@dataclass(frozen=True)
class LengthSpec:
    """``128`` | ``uniform:LO,HI`` | ``normal:MEAN,STD`` | ``exponential:MEAN``; draws are ints >= 1."""

    kind: str
    params: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> LengthSpec:
        text = text.strip()
        kind, sep, rest = text.partition(":")
        if not sep:
            kind, rest = "fixed", text
        values = rest.split(",") if rest else []
        if kind not in _KINDS or len(values) != _KINDS[kind]:
            raise ValueError(f"length spec {text!r}: use N, uniform:LO,HI, normal:MEAN,STD or exponential:MEAN")
        try:
            params = tuple(float(v) for v in values)
        except ValueError:
            raise ValueError(f"length spec {text!r}: parameters must be numbers") from None
        if kind == "fixed" and (params[0] < 1 or params[0] != int(params[0])):
            raise ValueError(f"length spec {text!r}: a fixed length is a positive integer")
        if kind == "uniform" and not 1 <= params[0] <= params[1]:
            raise ValueError(f"length spec {text!r}: need 1 <= LO <= HI")
        if kind in ("normal", "exponential") and (params[0] < 1 or min(params) < 0):
            raise ValueError(f"length spec {text!r}: need MEAN >= 1 and non-negative parameters")
        return cls(kind, params)

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(int(self.params[0]))
        return f"{self.kind}:" + ",".join(f"{p:g}" for p in self.params)

    @property
    def upper_bound(self) -> float:
        """Largest value a draw can take (inf for unbounded distributions)."""
        if self.kind == "fixed":
            return self.params[0]
        if self.kind == "uniform":
            return self.params[1]
        return float("inf")

    def sample(self, rng: random.Random, n: int, cap: int | None = None) -> list[int]:
        out = []
        for _ in range(n):
            if self.kind == "fixed":
                value = self.params[0]
            elif self.kind == "uniform":
                value = rng.randint(int(self.params[0]), int(self.params[1]))
            elif self.kind == "normal":
                value = rng.gauss(self.params[0], self.params[1])
            else:
                value = rng.expovariate(1.0 / self.params[0])
            value = max(1, round(value))
            out.append(min(value, cap) if cap else value)
        return out
