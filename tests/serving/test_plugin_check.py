"""The guard that a serving run really uses this plugin (vLLM would otherwise serve auto-round checkpoints with
its own INC loader, silently: that is how a GPU benchmark measured vLLM twice under our name, 2026-12-04)."""

from __future__ import annotations

import importlib.metadata
from types import SimpleNamespace

import pytest

from vllm_autoround.serving import plugin


def test_the_installed_package_exposes_its_vllm_entry_point():
    assert plugin.entry_point_registered()
    plugin.require_plugin()


def test_a_missing_entry_point_is_an_error_that_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [])
    with pytest.raises(RuntimeError, match="use_checkout.sh"):
        plugin.require_plugin()


def test_an_engine_that_resolved_another_method_is_an_error():
    """vLLM's INC override claims `quant_method: auto-round` checkpoints even under --quantization auto_round."""
    inc = SimpleNamespace(llm_engine=SimpleNamespace(model_config=SimpleNamespace(quantization="inc")))
    with pytest.raises(RuntimeError, match="'inc'"):
        plugin.require_plugin(inc)
    ours = SimpleNamespace(model_config=SimpleNamespace(quantization="auto_round"))
    plugin.require_plugin(ours)  # an LLMEngine directly


def test_a_server_for_our_method_does_not_start_without_the_plugin(monkeypatch, tmp_path):
    """`VLLMServer(..., quantization="auto_round")` (the demo, bench_compare and the e2e tests) checks the entry
    point before it starts vLLM, rather than measuring vLLM's own loader under our name."""
    from vllm_autoround.serving.launch import VLLMServer

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [])
    server = VLLMServer(tmp_path, quantization="auto_round", log_path=tmp_path / "log")
    with pytest.raises(RuntimeError, match="entry point"):
        server.__enter__()
    assert server.process is None


def test_checked_llm_checks_our_method_before_and_after_and_leaves_others_alone(monkeypatch):
    """The GPU scripts' engine factory: our method must resolve to our plugin; vLLM's own loaders are built as
    asked (the engine is faked here, so only the checks run)."""
    vllm = pytest.importorskip("vllm")
    resolved = {}

    class FakeLLM:
        def __init__(self, quantization=None, **kwargs):
            self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(quantization=resolved["method"]))

    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    resolved["method"] = "auto_round"
    assert isinstance(plugin.checked_llm(quantization="auto_round", model="m"), FakeLLM)
    resolved["method"] = "inc"
    with pytest.raises(RuntimeError, match="'inc'"):
        plugin.checked_llm(quantization="auto_round", model="m")
    assert isinstance(plugin.checked_llm(quantization=None, model="m"), FakeLLM)  # the built-in loader's row


FAKE_SERVE = """
import http.server, sys
print("INFO [core.py:117] Initializing a V1 LLM engine (v0.26.0) with config: model='m', dtype=torch.bfloat16, "
      f"quantization={sys.argv[2]}, enforce_eager=True", flush=True)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


@pytest.mark.parametrize("resolved", ["inc", "auto_round"])
def test_a_server_checks_the_method_its_engine_resolved(tmp_path, resolved):
    """After the start, the engine's config line must name our method (a stand-in server logs it as vLLM does):
    the entry-point check before the start cannot see what vLLM resolved."""
    import sys

    from vllm_autoround.serving.launch import VLLMServer

    script = tmp_path / "fake_serve.py"
    script.write_text(FAKE_SERVE)
    server = VLLMServer(tmp_path, quantization="auto_round", log_path=tmp_path / "log", startup_timeout=30)
    server.args = [sys.executable, str(script), str(server.port), resolved]
    if resolved == "inc":
        with pytest.raises(RuntimeError, match="resolved the quantization method to 'inc'"):
            server.__enter__()
        assert server.process.poll() is not None  # stopped, not left running
    else:
        with server:
            assert server.startup_seconds is not None


def test_the_config_line_of_both_vllm_versions_names_the_method():
    from vllm_autoround.serving.launch import resolved_quantization

    line = ("(EngineCore pid=887) INFO 12-04 18:42:41 [core.py:134] Initializing a V1 LLM engine (v0.32.0) with "
            "config: model='/tmp/w4', speculative_config=None, quantization=auto_round, enforce_eager=False")
    assert resolved_quantization("noise\n" + line + "\nmore") == "auto_round"
    assert resolved_quantization(line.replace("auto_round", "inc")) == "inc"
    assert resolved_quantization("no engine started") is None


def test_our_log_lines_go_through_vllms_handlers_at_its_level():
    """Our modules log under ``vllm_autoround``, outside vLLM's tree: without vLLM's handlers a server dropped their
    INFO lines (the kernels' warm-up times) and printed warnings unformatted."""
    import logging

    from vllm_autoround.serving.plugin import share_handlers

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    vllm_logger, ours = logging.Logger("vllm", level=logging.INFO), logging.Logger("vllm_autoround")
    vllm_logger.addHandler(handler)
    share_handlers(vllm_logger, ours)
    share_handlers(vllm_logger, ours)  # vLLM calls register() in every process it starts, maybe more than once
    ours.debug("below vLLM's level")
    ours.info("prepared in 1.00 s")
    assert seen == ["prepared in 1.00 s"] and ours.handlers == [handler]
