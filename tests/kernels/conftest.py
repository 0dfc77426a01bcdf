"""Kernel tests run the Triton kernels on the CPU through Triton's interpreter.

Triton picks interpreter-or-compiler when it is first imported, so TRITON_INTERPRET must be set before
anything imports triton; this conftest does it when no GPU is present. If another module imported triton
first, the interpreter tests fail with a message saying so rather than skipping.
"""

from __future__ import annotations

import os
import sys

if "triton" not in sys.modules:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def interpreter():
    """Skip nothing: fail loudly when the kernels cannot run here."""
    import torch

    from vllm_autoround.kernels import triton_kernels

    if not torch.cuda.is_available() and not triton_kernels.INTERPRETED:
        pytest.fail("Triton was imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1; "
                    "export TRITON_INTERPRET=1 to run the kernel tests on a CPU")
    return "cuda" if torch.cuda.is_available() and not triton_kernels.INTERPRETED else "cpu"
