# The verbs. Every target that needs Python sets up .venv itself on a fresh machine.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-installed
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help
help: ## List the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt
	@echo "setting up $(VENV) (build and test tools)"
	@python3 -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

.PHONY: venv
venv: $(STAMP) ## Create .venv with the build and test tools

# The engine is rebuilt only when its sources changed (Python files are used in place).
ENGINE_SOURCES := $(shell find engine -name '*.rs' -o -name Cargo.toml) Cargo.toml Cargo.lock pyproject.toml
BUILT := $(VENV)/.engine-built

$(BUILT): $(STAMP) $(ENGINE_SOURCES)
	@echo "building the engine (release)"
	@set -o pipefail; $(BIN)/maturin develop --release --quiet 2>&1 \
		| { grep -v -e '^Requirement already satisfied' -e '^Ignoring ' || true; }
	@touch $@

.PHONY: build-dev
build-dev: $(BUILT) ## Build the engine (release: timings are only meaningful optimised) into .venv

.PHONY: demo
demo: build-dev ## Run the demo: a real load test against the built-in target
	$(BIN)/loadpilot demo

CHROMIUM := /usr/bin/chromium

# Tests of what users see (reports, notebooks) run in Debian's Chromium, driven by Playwright.
$(CHROMIUM):
	apt-get update && apt-get install -y chromium

# Tests of the Prometheus metrics scrape them with a real Prometheus (Debian's package).
PROMETHEUS := /usr/bin/prometheus

$(PROMETHEUS):
	apt-get update && apt-get install -y prometheus

# An HTTP/1.1 and HTTP/2 server that is not built on the engine's libraries (Debian's nginx),
# and openssl to make its test certificate.
NGINX := /usr/sbin/nginx

$(NGINX):
	apt-get update && apt-get install -y nginx-light openssl

# Java HdrHistogram's own log processor, the reference the .hgrm files are held to.
HDRHISTOGRAM_JAVA := /usr/share/java/hdrhistogram.jar

$(HDRHISTOGRAM_JAVA):
	apt-get update && apt-get install -y default-jre-headless libhdrhistogram-java

# Fault tests put agents, NATS and the target in network namespaces and cut links with nftables.
NFT := /usr/sbin/nft

$(NFT):
	apt-get update && apt-get install -y nftables iproute2

.PHONY: test
test: build-dev $(CHROMIUM) $(PROMETHEUS) $(NGINX) $(HDRHISTOGRAM_JAVA) $(NFT) ## Run every test: Rust (cargo test) and Python (pytest, Chromium)
	cargo test --release --workspace --exclude loadpilot-python
	$(PY) -m pytest --durations=30
	$(PY) -m pytest --nbval-lax -p no:cacheprovider notebooks

.PHONY: coverage
coverage: $(CHROMIUM) $(PROMETHEUS) $(NGINX) $(HDRHISTOGRAM_JAVA) $(NFT) ## Every test with coverage (Python: pytest-cov, the engine: cargo-llvm-cov) in .venv-coverage; HTML in coverage/ (TESTS=... for fewer)
	bash tests/coverage.sh $(TESTS)

.PHONY: test-fast
test-fast: build-dev ## The edit-test loop (about 1.5 minutes): Rust unit tests, Python tests not marked slow
	cargo test --release --workspace --exclude loadpilot-python --lib
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider -n 2

.PHONY: check-binder
check-binder: ## Run binder/postBuild in a fresh environment on a clean copy, then the tutorials there
	bash binder/check.sh

.PHONY: check-lab
check-lab: build-dev $(CHROMIUM) ## Run the quickstart in JupyterLab in Chromium; refresh docs/images
	LOADPILOT_SAVE_SCREENSHOTS=1 $(PY) -m pytest -q tests/test_lab.py

.PHONY: lab
lab: build-dev ## Start JupyterLab on the tutorials (notebooks/)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: lint
lint: build-dev ## ruff, rustfmt, clippy, mypy, stubtest and the package's layers (import-linter)
	$(BIN)/ruff check loadpilot tests bench datasets deploy
	$(BIN)/ruff format --check loadpilot tests bench datasets deploy
	cargo fmt --all --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	$(BIN)/mypy loadpilot
	$(PY) -m mypy.stubtest loadpilot._engine
	$(BIN)/lint-imports

.PHONY: format
format: $(STAMP) ## Format Python and Rust
	$(BIN)/ruff format loadpilot tests bench datasets deploy
	$(BIN)/ruff check --fix loadpilot tests bench datasets deploy
	cargo fmt --all

.PHONY: bench
bench: bench-engine bench-http bench-profile bench-python bench-loop bench-named bench-tracing bench-locust bench-live bench-serve bench-distributed bench-peers ## Every benchmark (results in bench/results/, summary in docs/benchmarks.md)

.PHONY: bench-engine
bench-engine: build-dev ## Engine throughput vs wrk and memory over a long run (see docs/benchmarks.md)
	$(PY) bench/engine.py

.PHONY: bench-http
bench-http: build-dev ## The HTTP path at the limit: vs wrk (built-in target, nginx), memory per idle user, HTTP/2 vs h2load and oha
	$(PY) bench/http_path.py

.PHONY: bench-profile
bench-profile: build-dev ## Where the CPU goes at max throughput (perf): LoadPilot HTTP/1.1 and HTTP/2, and wrk
	$(PY) bench/profile.py

.PHONY: bench-python
bench-python: build-dev ## Python-logic tasks vs Locust FastHttpUser (installs locust into .venv)
	$(PY) bench/python_path.py

.PHONY: bench-loop
bench-loop: build-dev ## The one engine loop: Python tasks vs engine tasks, on_start values vs a fixed header
	$(PY) bench/one_loop.py

.PHONY: bench-named
bench-named: build-dev ## What naming requests costs: three names vs one, same task (timed, then counted under valgrind)
	$(PY) bench/named.py
	$(PY) bench/named.py --instructions --rounds 2

.PHONY: bench-tracing
bench-tracing: build-dev ## What trace context and keeping the slowest requests cost: on vs off
	$(PY) bench/tracing.py

.PHONY: bench-locust
bench-locust: build-dev ## Locustfiles: vs the same task in the DSL, and vs Locust itself (installs it)
	$(PY) bench/locustfiles.py

.PHONY: bench-peers
bench-peers: build-dev ## Against wrk, oha, k6 and Locust (installs them); then the chart and tables
	$(PY) bench/peers.py
	$(PY) bench/chart.py
	$(PY) bench/tables.py

.PHONY: bench-distributed
bench-distributed: build-dev ## Distributed runs: CPU per request over 2 agents, the coordinator under 100 agents
	$(PY) bench/distributed.py

.PHONY: bench-live
bench-live: build-dev ## What the notebook's live dashboard costs a run
	$(PY) bench/live.py

.PHONY: bench-serve
bench-serve: build-dev ## A long-lived `loadpilot serve`: its memory over 200 sequential runs
	$(PY) bench/serve_memory.py

.PHONY: bench-soak
bench-soak: build-dev ## One hour at 2,000/s with Prometheus on: memory and CPU per second, first vs last 10 minutes
	$(PY) bench/soak.py

# The container image of agents, serve mode and runs (deploy/Dockerfile); docker or podman.
DOCKER ?= docker
IMAGE ?= loadpilot
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

.PHONY: image
image: ## Build the container image with docker or podman (DOCKER=podman IMAGE=registry/loadpilot)
	$(DOCKER) build -f deploy/Dockerfile --build-arg LOADPILOT_VERSION=$(VERSION) -t $(IMAGE):$(VERSION) .

.PHONY: test-image
test-image: ## Build the image with podman from Debian-made bases and run agents, NATS, serve and a target in containers (root; about 5 minutes)
	bash deploy/test-image.sh

.PHONY: clean
clean: ## Remove build outputs and the virtual environment
	rm -rf target $(VENV) .venv-coverage coverage .coverage .pytest_cache .ruff_cache .mypy_cache
