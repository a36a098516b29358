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

.PHONY: setup system-deps test test-fast serve stop demo bench models report clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
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

# Foreground until Ctrl-C; extra flags via SERVE_ARGS (e.g. SERVE_ARGS=--no-token-auth, see clead-serve up --help).
serve: $(STAMP) system-deps
	$(BIN)/clead-serve up --inference-port $(INFERENCE_PORT) --management-port $(MANAGEMENT_PORT) --metrics-port $(METRICS_PORT) $(SERVE_ARGS)

# Stops a TorchServe left running from runs/serve (e.g. one started with SERVE_ARGS=--detach).
stop: $(STAMP)
	$(BIN)/clead-serve stop

demo: $(STAMP)
	$(BIN)/clead-demo

bench: $(STAMP) system-deps
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf build dist *.egg-info .pytest_cache runs/smoke
