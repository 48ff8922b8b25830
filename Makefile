# clipconv: the commands a new user runs. See README.md.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 is a matched pair (clip-anytorch imports torchvision).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-fast lint fuzz mutate mutate-resume demo bench clean

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

# Many more mutated inputs than make test tries (tests/test_fuzz.py); minutes, not part of make test.
FUZZ_EXAMPLES ?= 2000
fuzz: install
	CLIPCONV_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -p no:cacheprovider tests/test_fuzz.py --hypothesis-show-statistics

# Mutation testing of the modules that carry the promises ([tool.mutmut] in pyproject.toml); hours, not part
# of make test. The score and the survivors judged harmless are in docs/mutation.md.
# Part of them: make mutate MUTANTS='roundtrip.ops.* roundtrip.destination.*' (mutants/ keeps the results).
MUTANTS ?=
# No torch thread pool to be broken by mutmut's fork; the fastest tests first and no shrinking of a failing
# example (tests/conftest.py).
MUTMUT = OMP_NUM_THREADS=1 CLIPCONV_MUTATION_RUN=1 $(BIN)/mutmut
mutate: install
	$(MUTMUT) run $(MUTANTS); $(BIN)/mutmut results; $(RECORD_RESULTS)

# Resume a stopped run of the modules docs/mutation.md reports: the mutants that have no result yet (mutmut's
# own resume, a run without names, would also start every other module of only_mutate), and every mutant of a
# function changed since (with the statistics collected again). After writing tests for survivors:
# make mutate-resume MUTATE_RESUME=--survivors runs the survivors again too.
MUTATE_MODULES ?= verify references compare open_clip_config architecture destination
MUTATE_RESUME ?=
# mutants/ lasts as long as a checkout: the results go into docs/mutation-results.json, to be committed.
RECORD_RESULTS = $(BIN)/python tools/mutation_results.py save $(MUTATE_MODULES)
mutate-resume: install
	$(MUTMUT) run $$($(BIN)/python tools/unfinished_mutants.py $(MUTATE_RESUME) \
		$(MUTATE_MODULES)); $(BIN)/mutmut results; $(RECORD_RESULTS)

demo: install
	$(BIN)/python -m roundtrip.demo

# Speed and memory against the module-copying baseline; minutes, not part of `make test`.
# Options: make bench BENCH_ARGS="--models L14 --rounds 5"
bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info mutants
