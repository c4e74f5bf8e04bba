# procsentry: the two commands a newcomer needs are `sudo make run` and `sudo make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup run test test-unit doctor snapshot bench clean

setup:
	@bash scripts/setup.sh

# Stream every process event on this host as JSON lines (text when stdout is a terminal).
run: setup
	@$(PY) -m monitor watch $(ARGS)

# The whole suite, kernel tests included: PROCSENTRY_REQUIRE_BPF=1 turns a BPF skip into a failure.
test: setup
	@PROCSENTRY_REQUIRE_BPF=1 $(PY) -m pytest -q $(ARGS)

# Tests that need neither root nor BPF (parsers, fixture trees, wire decoding).
test-unit:
	@$(PY) -m pytest -q -m "not bpf and not root" $(ARGS)

doctor: setup
	@$(PY) -m monitor doctor $(ARGS)

snapshot: setup
	@$(PY) -m monitor snapshot $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis

-include mk/*.mk
