# weft: the three commands a fresh clone needs are `make setup`, `make test` and `make demo`.
CARGO ?= cargo
.DEFAULT_GOAL := help
.PHONY: help setup build test lint fuzz bench bench-floor soak demo demo-standalone envoy-configs clean
FUZZ_SECONDS ?= 20

# List the targets.
help:
	@awk '/^# /{doc=substr($$0,3)} /^[a-z-]+:/{sub(":.*","",$$1); if (doc) printf "  make %-6s %s\n", $$1, doc; doc=""}' Makefile

# Install everything the build, tests and demo need (wasm target, wrk, binaryen, Envoy in .venv); idempotent.
setup:
	bash scripts/setup.sh

# Build target/wasm/weft.wasm (wasm profile, wasm-opt where it helps), target/wasm/manifest.json, and the commands the walk-throughs use: target/debug/weft and target/debug/weft-upstream.
build:
	$(CARGO) run --quiet -p weft-wasm-build
	$(CARGO) build --quiet -p weft-cli -p weft-e2e --bin weft --bin weft-upstream

# Run every check: formatting, clippy, unit and property tests, end-to-end tests against real Envoy, a short fuzz run.
test: build lint
	$(CARGO) test --workspace --all-targets
	$(MAKE) --no-print-directory fuzz

# Fuzz the policy pipeline (parse, validate, compile, decide), then the xDS protocol's state machine (arbitrary requests, snapshots and reconnects, checked against its rules), each for FUZZ_SECONDS (20 in make test; more by hand).
fuzz:
	mkdir -p fuzz/corpus/policy fuzz/corpus/xds_protocol
	$(CARGO) fuzz run --sanitizer none --fuzz-dir fuzz policy fuzz/corpus/policy fuzz/seeds/policy -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048
	$(CARGO) fuzz run --sanitizer none --fuzz-dir fuzz xds_protocol fuzz/corpus/xds_protocol -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048

# The reliability suite for longer (SOAK_SECONDS each, 300 unless told): certificates rotating, policy churn at 1 Hz, under load, every answer judged.
SOAK_SECONDS ?= 300
soak: build
	WEFT_SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) test -p weft-e2e --test reliability -- --nocapture --test-threads=1

# Check formatting and clippy, warnings as errors (host crates, and the filter for wasm32-wasip1).
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --quiet -- -D warnings
	$(CARGO) clippy -p weft-envoy --target wasm32-wasip1 --quiet -- -D warnings

# Benchmarks, one run: the policy engine (criterion), then wrk through Envoy without and with weft.wasm, then instructions per request under callgrind, then the controller under 100, 1,000 and 5,000 simulated proxies (convergence, memory, churn); figures go to docs/BENCHMARKS.md.
bench: build
	$(CARGO) bench --quiet -p weft-policy --bench engine
	$(CARGO) run --release --quiet -p weft-e2e --bin weft-bench
	$(CARGO) build --release --quiet -p weft-cli --bin weft
	$(CARGO) run --release --quiet -p weft-e2e --bin weft-xds-bench -- --proxies 100,1000,5000

# The floor under weft's per-request cost: a module making only the host calls weft's filter makes (tests/floor-probe), measured beside weft.wasm in instructions per request, inbound and outbound (docs/BENCHMARKS.md).
FLOOR_PROBE = $(CARGO) build --release --quiet --target wasm32-wasip1 --manifest-path tests/floor-probe/Cargo.toml --target-dir target/floor-probe
FLOOR_BENCH = $(CARGO) run --release --quiet -p weft-e2e --bin weft-bench -- --rounds 1 --duration 1
bench-floor: build
	$(FLOOR_PROBE)
	cp target/floor-probe/wasm32-wasip1/release/weft_floor_probe.wasm target/floor-probe/inbound.wasm
	$(FLOOR_PROBE) --features outbound
	cp target/floor-probe/wasm32-wasip1/release/weft_floor_probe.wasm target/floor-probe/outbound.wasm
	$(FLOOR_BENCH) --suite access --compare-wasm target/floor-probe/inbound.wasm
	$(FLOOR_BENCH) --suite split --compare-wasm target/floor-probe/outbound.wasm

# The main job: a mesh of real Envoys driven by weft's controller (examples/mesh): access, split and metrics over mTLS, then policy edits enforced live; under a minute, nothing left behind.
demo: build
	bash scripts/demo.sh

# Rewrite envoy-configs/ from envoy-config/src/shipped.rs and examples/shop (a test fails when they differ).
envoy-configs:
	$(CARGO) run --quiet -p weft-envoy-config --bin weft-envoy-configs

# Start Envoy with envoy-configs/standalone.yaml in front of an upstream and send a request through weft.
demo-standalone: build
	bash scripts/demo-standalone.sh

# Remove build outputs (keeps .venv).
clean:
	$(CARGO) clean
