"""Run a GPU script's main() in CI: its engine subprocesses replaced by a fake, no model built or quantized."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType


def run_main(monkeypatch, script: ModuleType, argv: list[str], fake_run: Callable, out: str | None = None) -> int:
    """``script.main()`` with ``argv``; each engine subprocess is ``fake_run(cmd, env=...)``; $OUT is ``out``."""
    monkeypatch.setattr(script.subprocess, "run", fake_run)
    monkeypatch.setattr(script, "build_model", lambda path: None)
    monkeypatch.setattr(script, "quantize", lambda work, configs: None)
    if out is None:
        monkeypatch.delenv("OUT", raising=False)
    else:
        monkeypatch.setenv("OUT", out)
    monkeypatch.setattr(sys, "argv", [f"{script.__name__.rsplit('.', 1)[-1]}.py", *argv])
    return script.main()
