# Two entry points (README): `make demo` and `make test`. Both create .venv if it is missing.
# torch is installed first and pinned to the CPU build so that pip never pulls a multi-GB CUDA wheel;
# GPU users: install your own torch build into .venv first, then `pip install -e ".[dev]"`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

$(BIN)/saga: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/saga

venv: $(BIN)/saga

# For the lent GPU machine (bench/gpu_check.sh): wheels of the dependencies its image lacks, carried in .whl/.
wheels: $(BIN)/saga
	$(BIN)/python -m pip download -q --no-deps -d .whl pytorch-metric-learning peft

demo: $(BIN)/saga
	$(BIN)/saga demo

test: $(BIN)/saga
	$(BIN)/python -m pytest -q

.PHONY: venv wheels demo test
