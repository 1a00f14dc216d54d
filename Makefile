# Two commands do everything: `make demo` (the whole pipeline on the synthetic benchmark) and `make test`.
# Each creates .venv and installs the project into it when missing or out of date.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch and torchvision first, so pip settles them before the rest (override, e.g. TORCH="torch==2.5.1 torchvision==0.20.1")
TORCH  ?= torch>=2.1 torchvision>=0.16

.PHONY: demo demo-quick test install bench gpu-check readme clean-venv

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev,onnx]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/compress demo

demo-quick: $(STAMP)
	$(BIN)/compress demo --quick

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# every CUDA path once, one PASS/FAIL line each (a few minutes on one GPU); without CUDA: one line, exit 0
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

clean-venv:
	rm -rf $(VENV)

readme: $(STAMP)
	$(BIN)/python -m compress.recipe docs/recipes.md
