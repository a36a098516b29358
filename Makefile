# clead: every target sets up what it needs on first use.
#   make test    venv + packages + chromium, then the whole test suite
#   make serve   serve the shipped models with TorchServe (Ctrl-C stops it)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= serving,demo,dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DATA ?= ../shared/data/cifar10
# Ports for `make serve` (TorchServe inference / management / metrics).
INFERENCE_PORT ?= 8080
MANAGEMENT_PORT ?= 8081
METRICS_PORT ?= 8082

.PHONY: setup system-deps test test-fast serve stop demo bench reliability study models report clean

setup: $(STAMP)

# pyproject.toml holds the supported ranges, constraints.txt the tested versions (the lock).
# torchattacks goes in with --no-deps: its requests~=2.25.1 pin would drag in requests, urllib3
# and idna versions with published CVEs, and it never imports requests (see pyproject.toml).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	$(BIN)/pip install -q --no-deps -c constraints.txt torchattacks
	@touch $@

# Debian packages the tests need: chromium for the browser test of the demo, java for TorchServe.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

# The default suite without server and browser tests, for quick iterations.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not server and not browser"

# Foreground until Ctrl-C; extra flags via SERVE_ARGS (e.g. SERVE_ARGS=--no-token-auth or --no-front,
# see clead-serve up --help). INFERENCE_PORT is the front's; TorchServe's own sits behind it on loopback.
serve: $(STAMP) system-deps
	$(BIN)/clead-serve up --inference-port $(INFERENCE_PORT) --management-port $(MANAGEMENT_PORT) --metrics-port $(METRICS_PORT) $(SERVE_ARGS)

# Stops a TorchServe (and its front) left running from runs/serve (e.g. one started with SERVE_ARGS=--detach).
stop: $(STAMP)
	$(BIN)/clead-serve stop

demo: $(STAMP)
	$(BIN)/clead-demo

bench: $(STAMP) system-deps
	$(BIN)/python -m benchmarks.run

# The real stack on loopback under load, faults (worker, front, TorchServe killed; then Triton's
# tritonserver, where a Triton environment exists), slow clients, overload and hostile images;
# writes docs/reliability.md (about 10 minutes on 2 cores).
# RELIABILITY_ARGS=--scale 0.1 for a quick look, --engines triton for the Triton kill alone.
RELIABILITY_ARGS ?=
reliability: $(STAMP) system-deps
	$(BIN)/python -m benchmarks.reliability --out docs/reliability.md $(RELIABILITY_ARGS)

# The study of docs/study.yaml: trains every run (standard, PGD-AT, TRADES, the C-LEAD ablation,
# C-LEAD on fixed views), picks the C-LEAD variant with the best robust validation accuracy,
# exports the shipped models to models/cifar10/ and evaluates them on the test split (metrics
# into their JSON). Every step resumes. STUDY_JOBS jobs run at once: on one GPU, 16 (all of
# them); on a CPU, 1 (days of work here: see README). STUDY_ARGS adds e.g. --only C-LEAD,Standard.
STUDY_JOBS ?= 1
STUDY_ARGS ?=
study models: $(STAMP)
	$(BIN)/clead-train study --spec docs/study.yaml --data $(DATA) --jobs $(STUDY_JOBS) $(STUDY_ARGS)

# The robustness study from the runs and eval reports listed in docs/study.yaml (missing ones show as "not run").
report: $(STAMP)
	$(BIN)/clead-train report --spec docs/study.yaml --out docs/robustness.md
	$(BIN)/clead-train report --spec docs/screen.yaml --out docs/screen.md

clean:
	rm -rf build dist *.egg-info .pytest_cache runs/smoke
