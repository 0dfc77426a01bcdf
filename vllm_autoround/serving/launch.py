"""Start ``vllm serve`` as a child process on loopback and stop it cleanly.

Used by the demo, the end-to-end tests and the benchmarks, so that all three start vLLM the same way.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from vllm_autoround.serving.plugin import METHOD_NAME, require_plugin

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def cpu_env() -> dict[str, str]:
    """Environment for vLLM on a small CPU machine: a modest KV cache and no hub access."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the test suite's setting for kernel tests; vLLM must not inherit it
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return env


def serve_command() -> list[str]:
    """``vllm serve`` where vLLM's CLI can run; else the API server module that it wraps.

    vllm-cpu installs under another distribution name, and its CLI looks up the version of a
    distribution called ``vllm``, so ``vllm serve`` fails there before it starts.
    """
    try:
        importlib.metadata.version("vllm")
        return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-W", "ignore::DeprecationWarning", "-m", "vllm.entrypoints.openai.api_server",
                "--model"]


def resolved_quantization(log: str) -> str | None:
    """The quantization method in the engine's "Initializing a V1 LLM engine ... with config:" line."""
    found = re.search(r"with config: .*?\bquantization=([^,\s]+)", log)
    return found.group(1) if found else None


class VLLMServer:
    """Context manager around one ``vllm serve`` process; ``base_url`` is its OpenAI endpoint."""

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        quantization: str | None = None,
        dtype: str = "float32",
        max_model_len: int = 512,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        startup_timeout: float = 600.0,
        log_path: str | os.PathLike | None = None,
    ) -> None:
        self.model = str(model)
        self.quantization = quantization
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.startup_timeout = startup_timeout
        self.env = env if env is not None else cpu_env()
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
        self.args = [
            *serve_command(), self.model,
            "--host", HOST, "--port", str(self.port), "--dtype", dtype,
            "--max-model-len", str(max_model_len), "--served-model-name", "model",
            *(["--quantization", quantization] if quantization else []),
            *extra_args,
        ]
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    def __enter__(self) -> VLLMServer:
        env = self.env
        if self.quantization == METHOD_NAME:
            require_plugin()  # else vLLM's INC loader serves auto-round checkpoints in our place, silently
            if env.get("VLLM_LOGGING_LEVEL", "INFO").upper() not in ("INFO", "DEBUG"):
                env = dict(env, VLLM_LOGGING_LEVEL="INFO")  # the engine's config line names the method it chose
        start = time.monotonic()
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        try:
            self._wait_ready(start)
            if self.quantization == METHOD_NAME:
                self._check_resolved_method()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - start
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_ready(self, start: float) -> None:
        while time.monotonic() - start < self.startup_timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with code {self.process.returncode} before it was "
                                   f"ready; log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"vllm serve was not ready after {self.startup_timeout:.0f} s; log {self.log_path}:\n"
                           f"{self.log_tail()}")

    def _check_resolved_method(self) -> None:
        """Raise unless the engine's config line (vLLM 0.26 and 0.32 log it at INFO) names our method: the plugin
        check before the start cannot see what vLLM resolved."""
        resolved = resolved_quantization(self.log_path.read_text(errors="replace"))
        if resolved != METHOD_NAME:
            found = f"resolved the quantization method to {resolved!r}" if resolved else \
                "logged no engine config line naming its quantization method"
            raise RuntimeError(f"vllm serve {found}, not {METHOD_NAME!r}; log {self.log_path}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM the whole process group (vLLM spawns engine workers), SIGKILL after a grace period."""
        if self.process is None or self.process.poll() is not None:
            self._close_log()
            return
        for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        self._close_log()

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()
