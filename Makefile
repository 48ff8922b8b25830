# clipconv: the commands a new user runs. See README.md.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 is a matched pair (clip-anytorch imports torchvision).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-fast lint demo bench clean

install: $(BIN)/clipconv

$(BIN)/clipconv: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

test: install
	$(BIN)/pytest

# Everything except the full-depth released architectures.
test-fast: install
	$(BIN)/pytest -m "not released"

# Style and correctness checks of ruff (configured in pyproject.toml); CI runs it beside the tests.
lint: install
	$(BIN)/ruff check .

demo: install
	$(BIN)/python -m roundtrip.demo

# Speed and memory against the module-copying baseline; minutes, not part of `make test`.
# Options: make bench BENCH_ARGS="--models L14 --rounds 5"
bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
