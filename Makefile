# Two entry points: `make repro` runs the pipeline on the built-in synthetic default,
# `make test` runs the quick test loop (`make test-all` and `make test-faults`: everything, as CI runs it).
# They create .venv from the pinned requirements when it is missing or older than them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.test-installed

.PHONY: venv repro test test-all test-faults bench clean-venv mlflow-ui mlflow-server plots-template browser

# MLflow's client and UI telemetry off, like DVC's analytics in .dvc/config (`MLFLOW_DISABLE_TELEMETRY=false make ...`
# turns it back on); pipeline/core/tracking.py sets the same default for the stages.
export MLFLOW_DISABLE_TELEMETRY ?= true
MLFLOW_PORT ?= 5000

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# test-only assets from the registry (requirements-test.txt: MTCNN's trained ONet weights, a real face video), their
# data files alone: --no-deps, since they pin an old torch and torchvision that the tests never import
$(TEST_STAMP): requirements-test.txt $(STAMP)
	$(BIN)/pip install --quiet --no-deps -r requirements-test.txt
	touch $(TEST_STAMP)

# every params check first (seconds; exit 2 naming each bad key), so a bad search.layers stops it before ingest
repro: $(STAMP)
	$(BIN)/python -m pipeline.checks params.yaml
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# the quick local loop (a few minutes on 2 cores): every test but those marked `slow` (real `dvc repro` runs, Ray
# searches and clusters, MLflow servers, the browser checks of the DVC plots and the MLflow UI) and `faults`
test: $(TEST_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow and not faults" $(PYTEST_ARGS)

# everything but the fault tests, the slow ones included (CI: .ci/run, then `make test-faults`)
test-all: $(TEST_STAMP) browser
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not faults" $(PYTEST_ARGS)

# the real-process fault tests (tests marked `faults`: a Ray node SIGKILLed mid-search, the MLflow server stopped
# mid-search, two queued DVC experiments at once; network namespaces, so root); CI runs them after `make test-all`
test-faults: $(TEST_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m faults $(PYTEST_ARGS)

# Debian's chromium for the browser checks in tests/test_pipeline_e2e.py (tests/browser.py: headless, loopback
# only; the DVC plots page and the MLflow UI, marked `slow`); installed when missing and apt-get exists
browser:
	@command -v chromium >/dev/null || ! command -v apt-get >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "warning: could not install chromium; the browser tests (tests/test_pipeline_e2e.py) will be skipped"

BENCHES := layers data extract search dvc stream memory scale

# every CPU benchmark, one after another (about 6 minutes on 2 cores, bench.memory about 3 of them, plus bench.scale:
# 1 minute idle, 4-6 on 2 shared cores): full output in bench_out/NAME.txt,
# the `target ...` lines on the terminal; fails if a benchmark fails (a missed target is printed, not a failure)
bench: $(STAMP)
	mkdir -p bench_out
	for b in $(BENCHES); do \
	  echo "== bench.$$b"; \
	  PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.$$b > bench_out/$$b.txt 2>&1 || { tail -20 bench_out/$$b.txt; exit 1; }; \
	  grep '^target ' bench_out/$$b.txt; \
	done

# the UI on the local store; prints the link to the runs list (MLflow 3 opens experiments in its GenAI view otherwise).
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: no job workers (about 2 GB of memory for GenAI jobs the project never runs)
mlflow-ui: $(STAMP)
	@$(BIN)/python -m pipeline.core.mlflow_links --db mlflow.db --port $(MLFLOW_PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db \
	  --host 127.0.0.1 --port $(MLFLOW_PORT)

# A tracking server (docs/guide/mlflow.md, "A team's tracking server"): artifacts in ./mlartifacts (proxied
# `mlflow-artifacts:` URIs, so they follow the checkout when it is moved); log to it with
# MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT) make repro.
# MLFLOW_BACKEND: the store, sqlite:///mlflow.db or postgresql://USER@HOST:PORT/DB (its password in ~/.pgpass, not
#   on this command line; SQLAlchemy 2.1 reads postgresql:// as psycopg 3, so the pinned psycopg2 is named for it).
#   Its schema is created or upgraded first (`mlflow db upgrade`): back the database up before a new MLflow version.
# MLFLOW_AUTH=1: MLflow's basic-auth app; needs MLFLOW_FLASK_SERVER_SECRET_KEY, and on the first start
#   MLFLOW_AUTH_ADMIN_PASSWORD (users in ./basic_auth.db, or where MLFLOW_AUTH_CONFIG_PATH's ini says).
# MLFLOW_HOST: the address to listen on; anything but loopback only with MLFLOW_AUTH=1 on a trusted network.
MLFLOW_BACKEND ?= sqlite:///mlflow.db
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_AUTH ?=
MLFLOW_STORE = $(patsubst postgresql://%,postgresql+psycopg2://%,$(MLFLOW_BACKEND))
mlflow-server: $(STAMP)
	@$(if $(filter sqlite:///mlflow.db,$(MLFLOW_BACKEND)),$(BIN)/python -m pipeline.core.mlflow_links --db mlflow.db --port $(MLFLOW_PORT),true)
	@echo "mlflow db upgrade <$(firstword $(subst ://, ,$(MLFLOW_BACKEND))) store>  (creates or upgrades MLflow's tables)"
	@$(BIN)/mlflow db upgrade '$(MLFLOW_STORE)'
	@echo "mlflow server on http://$(MLFLOW_HOST):$(MLFLOW_PORT)$(if $(MLFLOW_AUTH), (basic-auth))"
	@MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --backend-store-uri '$(MLFLOW_STORE)' \
	  --artifacts-destination ./mlartifacts --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) \
	  $(if $(MLFLOW_AUTH),--app-name basic-auth)

# rebuild .dvc/plots/offline.html (vega, vega-lite, vega-embed inlined) from the pinned npm packages
plots-template:
	rm -rf .dvc/tmp/npm && mkdir -p .dvc/tmp/npm && cp .dvc/plots/vendor/package*.json .dvc/tmp/npm/
	cd .dvc/tmp/npm && npm ci --no-audit --no-fund
	$(BIN)/python .dvc/plots/offline.py .dvc/tmp/npm/node_modules

# the docs site (docs/, mkdocs.yml) into site/: `mkdocs build --strict` fails on a broken link or anchor, a page left
# out of the nav or a docstring mkdocstrings cannot render; offline (no web fonts, no CDN: open site/index.html).
# docs-serve: the same site with search and live reload on http://127.0.0.1:$(DOCS_PORT)
DOCS_PORT ?= 8000
.PHONY: docs docs-serve
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:$(DOCS_PORT)

clean-venv:
	rm -rf $(VENV)
