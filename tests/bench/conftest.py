"""Fixtures for the bench tests: the scripted aiohttp server of fake_openai.py, in its own process
(so its timing does not share an event loop or the GIL with the client under test)."""

from __future__ import annotations

import contextlib
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

FAKE_SERVER = Path(__file__).with_name("fake_openai.py")


@contextlib.contextmanager
def fake_server() -> Iterator[tuple[str, subprocess.Popen]]:
    proc = subprocess.Popen([sys.executable, str(FAKE_SERVER)], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"fake server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}", proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with fake_server() as (url, _):
        yield url


@pytest.fixture
def start_fake_server():
    """The context manager itself, for tests that need a server of their own (to kill it)."""
    return fake_server
