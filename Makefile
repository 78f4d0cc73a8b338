# Two entry points: `make repro` runs the pipeline on the built-in synthetic default,
# `make test` runs the test suite. Both create .venv from the pinned requirements when it is
# missing or older than them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv repro test bench clean-venv mlflow-ui

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

BENCHES := layers data extract search dvc stream memory

# every CPU benchmark, one after another (about 6 minutes on 2 cores, bench.memory about 3 of them): full output in bench_out/NAME.txt,
# the `target ...` lines on the terminal; fails if a benchmark fails (a missed target is printed, not a failure)
bench: $(STAMP)
	mkdir -p bench_out
	for b in $(BENCHES); do \
	  echo "== bench.$$b"; \
	  PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.$$b > bench_out/$$b.txt 2>&1 || { tail -20 bench_out/$$b.txt; exit 1; }; \
	  grep '^target ' bench_out/$$b.txt; \
	done

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean-venv:
	rm -rf $(VENV)
