# The README's commands. `make` alone prints this help.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODELS := build/models
REPOSITORY := build/model_repository

.DEFAULT_GOAL := help
.PHONY: help deps lock models seeds cards engines gpu-check test test-unit demo bench lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

deps: $(VENV)/.installed broker promtool qemu browser ## Python packages in .venv; Mosquitto, promtool, qemu-user and Chromium from Debian

# Every package at the version the suite passed with (tools/constraints.txt; `make lock` refreshes it).
CONSTRAINTS := tools/constraints.txt
EXTRAS := serve-cpu,train,dev

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned exactly: the CPU wheel; a range would pull a multi-GB CUDA build
	$(PY) -m pip install -q -c $(CONSTRAINTS) torch==2.13.0
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	touch $@

# Resolve pyproject.toml afresh in a scratch venv and pin what it installed; then `make test` before committing.
LOCK_VENV := build/lock-venv
lock: ## refresh tools/constraints.txt from pyproject.toml (newest versions its ranges allow)
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --upgrade pip
	$(LOCK_VENV)/bin/pip install -q torch==2.13.0
	$(LOCK_VENV)/bin/pip install -q '.[$(EXTRAS)]'
	{ grep '^#' $(CONSTRAINTS); $(LOCK_VENV)/bin/pip freeze --exclude-editable | grep -v '^edge-inspect' \
	  | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS) && rm -rf $(LOCK_VENV)

.PHONY: broker
broker:
	@if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto mosquitto-clients; \
	fi

# promtool (checks and unit-tests systemd/monitoring/) ships in Debian's prometheus package; its recommends
# (node exporter, smartmontools, ipmitool ...) are not needed, nor the Prometheus server it would enable.
.PHONY: promtool
promtool:
	@if ! command -v promtool >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus; \
	  $$SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true; \
	fi

# Debian's Chromium for the review pages' browser test (Playwright drives it; no browser is ever downloaded).
.PHONY: browser
browser:
	@if ! command -v chromium >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; \
	fi

# qemu-user runs one test under an emulated CPU without VNNI (tests/unit/test_quantize.py): INT8 must score the same.
.PHONY: qemu
qemu:
	@if ! command -v qemu-x86_64 >/dev/null && [ "$$(uname -m)" = x86_64 ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends qemu-user; \
	fi

models: $(REPOSITORY)/.built ## train the reference models and assemble the CPU Triton repository

# Every first-party file that training and measuring read, followed import by import (tools/provenance.py).
TRAINING_SOURCES := $(shell $(PYTHON) -m tools.provenance sources)

$(MODELS)/.trained: $(VENV)/.installed $(TRAINING_SOURCES)
	$(PY) -m tools.train --model all --out $(MODELS)
	touch $@

# FP16 and INT8 (Q/DQ) ONNX forms beside the FP32 ones, measured against FP32 on held-out dies and gated
$(MODELS)/.quantized: $(MODELS)/.trained
	$(PY) -m tools.quantize --models $(MODELS)
	touch $@

$(REPOSITORY)/.built: $(MODELS)/.trained $(MODELS)/.quantized tools/build_repository.py $(wildcard model_repository/cpu/*.py model_repository/cpu/*/*)
	$(PY) -m tools.build_repository --models $(MODELS) --out $(REPOSITORY)
	touch $@

SEEDS ?= 1 2 3 4 5
seeds: models ## train the recipe over SEEDS (hours on 2 cores; reuses current seeds) for each figure's spread
	$(PY) -m tools.reports.seed_spread --seeds $(SEEDS) --reference $(MODELS) --out build/seeds

cards: seeds ## regenerate model_repository/cards/ (metrics, seed spread, precision gate, provenance, latency)
	$(PY) -m tools.reports.model_card --models $(MODELS) --spread build/seeds/seed_spread.json --out model_repository/cards

# On the GPU host (TensorRT and pycuda installed: pip install -e '.[gpu]'): strongly typed engines from the FP16 /
# INT8 ONNX forms, checked against ONNX Runtime, into the GPU variant of the repository; stale plans only.
GPU_REPOSITORY := build/model_repository_gpu
# Exit 3: every model is served, one at least by ONNX Runtime on the GPU because its engine failed (the log says why).
engines: $(MODELS)/.quantized ## GPU host only: build or refresh the TensorRT engines of the GPU repository
	$(PY) -m tools.gpu.build_engines --models $(MODELS) --out $(GPU_REPOSITORY) || [ $$? -eq 3 ]

# Runs anywhere: without an NVIDIA GPU it prints `skipped: no GPU` and the reason. Needs `make models` on a GPU host.
gpu-check: $(VENV)/.installed ## GPU host: engines (if TensorRT imports), then daemon vs raw Triton on them; else skipped
	$(PY) -m tools.gpu.check --models $(MODELS) --repository $(GPU_REPOSITORY)

test: deps models lint ## lint, then every test tier (unit, integration with real Triton and Mosquitto, e2e)
	$(PY) -m pytest tests

test-unit: $(VENV)/.installed ## unit tests only (no servers)
	$(PY) -m pytest tests/unit

demo: deps models ## the daemon with real Triton (CPU), Mosquitto, simulated AOI tools and MES for about a minute
	$(PY) -m tools.station.demo --repository $(REPOSITORY)

bench: deps models ## daemon against raw Triton; its ceiling and CPU per stage (null models); captures off/on; p99 at 20/s
	$(PY) -m tools.bench.e2e --repository $(REPOSITORY)
	$(PY) -m tools.bench.ceiling --repository $(REPOSITORY)
	$(PY) -m tools.bench.capture --repository $(REPOSITORY)
	$(PY) -m tools.bench.join --repository $(REPOSITORY) --rounds 1

lint: $(VENV)/.installed ## ruff check and format --check, and mypy --strict over edge/ and calibration/ (pyproject.toml)
	$(VENV)/bin/ruff check edge calibration tools tests model_repository
	$(VENV)/bin/ruff format --check edge calibration tools tests model_repository
	$(VENV)/bin/mypy

clean: ## remove built models and run state (keeps .venv)
	rm -rf build var
