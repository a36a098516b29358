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

.PHONY: setup system-deps test test-fast serve stop demo bench models ship report clean

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

# The shipped models: same architecture, epochs, schedule and eps for both; each run resumes
# if its directory already holds one. Metrics: clean accuracy on the whole test split, PGD-20
# and AutoAttack (torchattacks) on 1,000 class-balanced test images, written into the JSON.
SHIP_ARGS ?= --model preact_resnet18 --width 0.25 --epochs 10 --batch-size 128 --val-size 1000 --val-n 500 --eps 8/255
CLEAD_ARGS ?= --attack-steps 1
EVAL_N ?= 1000
# Attacks measured on EVAL_N images by `make ship`; the study (`make report`) wants
# SHIP_ATTACKS="pgd20,cw,apgd-t,autoattack" and SHIP_SANITY=--sanity (slower on a CPU).
SHIP_ATTACKS ?= pgd20,autoattack
SHIP_SANITY ?=

models: models/cifar10/baseline.pt models/cifar10/clead.pt

models/cifar10/baseline.pt: | $(STAMP)
	$(BIN)/clead-train fit --method standard $(SHIP_ARGS) --data $(DATA) --out runs/cifar10-baseline $(if $(wildcard runs/cifar10-baseline/last.pt),--resume)
	$(MAKE) ship NAME=baseline RUN=runs/cifar10-baseline

models/cifar10/clead.pt: | $(STAMP)
	$(BIN)/clead-train fit --method clead $(SHIP_ARGS) $(CLEAD_ARGS) --data $(DATA) --out runs/cifar10-clead $(if $(wildcard runs/cifar10-clead/last.pt),--resume)
	$(MAKE) ship NAME=clead RUN=runs/cifar10-clead

# Export a run and measure it on the test split (NAME, RUN); --resume reuses finished attacks.
ship: $(STAMP)
	@# Re-export only a newer checkpoint: TorchScript files are not byte-reproducible, and a new
	@# sha256 would invalidate the finished evaluations that --resume reuses.
	test models/cifar10/$(NAME).pt -nt $(RUN)/best.pt || \
	    $(BIN)/clead-train export $(RUN) --out models/cifar10/$(NAME).pt --name $(NAME)
	$(BIN)/clead-train eval --model models/cifar10/$(NAME).pt --data $(DATA) --attacks fgsm --n all --no-curve \
	    --out runs/eval-$(NAME)-clean --update-metadata --no-progress --resume
	$(BIN)/clead-train eval --model models/cifar10/$(NAME).pt --data $(DATA) --attacks $(SHIP_ATTACKS) --n $(EVAL_N) \
	    --out runs/eval-$(NAME) --update-metadata --no-progress --resume $(SHIP_SANITY)

# The robustness study from the runs and eval reports listed in docs/study.yaml (missing ones show as "not run").
report: $(STAMP)
	$(BIN)/python -m training.study --spec docs/study.yaml --out docs/robustness.md

clean:
	rm -rf build dist *.egg-info .pytest_cache runs/smoke
