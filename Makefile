# make setup  - Debian packages, .venv with pinned deps, the package built into it (idempotent)
# make demo   - the main job: a standalone Mooncake, the seed's example over mooncake://, a model save/load
# make test   - every test: C++ (GoogleTest, plus ASan/UBSan and TSan builds), fuzz smoke, Python, SGLang's loader
# make test-sglang - SGLang's real model loader over mooncake:// through our plugin (own venv, ~2.5 GB)
# make bench-sglang - SGLang's loading paths timed against the raw wheel (same venv)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SGLANG_VENV ?= .venv-sglang
SGLANG_PY := $(SGLANG_VENV)/bin/python
BUILD ?= build
JOBS ?= $(shell nproc)
FUZZ_SECONDS ?= 30
APT_PACKAGES := build-essential cmake iptables ninja-build libgtest-dev nlohmann-json3-dev libcurl4-openssl-dev libxxhash-dev libbenchmark-dev clang libclang-rt-14-dev \
	libibverbs1 librdmacm1 libnuma1 liburing2 libcurl4 linux-perf

.PHONY: setup apt venv python-package cpp demo test test-cpp test-sanitize test-fuzz fuzz-long fuzz-build fuzz-run \
	test-python test-install stress soak bench clean \
	sglang-venv test-sglang bench-sglang bench-more bench-micro bench-profile

setup: apt venv python-package

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/.deps: requirements-dev.txt requirements-nodeps.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

venv: $(VENV)/.deps

# One wheel, built once and installed into .venv (and by sglang-venv into the
# SGLang venv: same CPython, and Mooncake is loaded at run time, so the one
# build serves both). Rebuilds only what changed (scikit-build-core keeps
# build/python).
WHEEL_DIR := $(BUILD)/wheel
python-package: $(VENV)/.deps
	rm -rf $(WHEEL_DIR)
	$(PY) -m pip wheel -q --no-build-isolation --no-deps -w $(WHEEL_DIR) .
	$(PY) -m pip install -q --no-deps --force-reinstall $(WHEEL_DIR)/mooncake_connector-*.whl

cpp: $(VENV)/.deps
	cmake -S . -B $(BUILD)/cpp -G Ninja -DMC_BUILD_TESTS=ON -DMC_BUILD_MOONCAKE_TESTS=ON -DMC_BUILD_BENCH=ON \
	  -DPython_EXECUTABLE=$(CURDIR)/$(PY) -DCMAKE_MAKE_PROGRAM=$$(command -v ninja)
	cmake --build $(BUILD)/cpp -j $(JOBS)

# Mooncake's client logs verbosely to stderr; the demo keeps that in a file
# (and shows its end if the demo fails).
demo: setup
	@mkdir -p $(BUILD)
	@$(PY) examples/seed_example.py 2> $(BUILD)/demo.stderr.log || { tail -n 40 $(BUILD)/demo.stderr.log; exit 1; }
	@echo "(Mooncake's own log lines: $(BUILD)/demo.stderr.log)"

test: setup test-cpp test-sanitize test-fuzz test-install test-python test-sglang

test-cpp: cpp python-package
	ctest --test-dir $(BUILD)/cpp --output-on-failure -j $(JOBS)
	MC_TEST_PYTHON=$(CURDIR)/$(PY) $(BUILD)/cpp/mooncake_store_tests

# ASan+UBSan over every C++ test; TSan over the concurrent ones.
test-sanitize:
	cmake -S . -B $(BUILD)/asan -G Ninja -DMC_BUILD_TESTS=ON -DMC_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug
	cmake --build $(BUILD)/asan -j $(JOBS)
	$(BUILD)/asan/mooncake_connector_tests --gtest_brief=1
	cmake -S . -B $(BUILD)/tsan -G Ninja -DMC_BUILD_TESTS=ON -DMC_SANITIZE=thread -DCMAKE_BUILD_TYPE=Debug
	cmake --build $(BUILD)/tsan -j $(JOBS)
	$(BUILD)/tsan/mooncake_connector_tests --gtest_brief=1 --gtest_filter='*Concurrent*:*Direct*:*LocalReplicas*:SharedBlocks*:Pages.*:*LoadInto*'

FUZZ_TARGETS := value_format url chunk_header mooncake_read manifest
FUZZ_LONG_SECONDS ?= 3600

# A bounded libFuzzer run of every parser of untrusted bytes, seeded from fuzz/corpus.
test-fuzz: fuzz-build
	$(MAKE) --no-print-directory fuzz-run FUZZ_RUN_SECONDS=$(FUZZ_SECONDS)

# The same for FUZZ_LONG_SECONDS (1 hour) per target; each prints its exec count
# (libFuzzer's "Done N runs"). New inputs go to build/fuzz/corpus_*: merge the
# useful ones into fuzz/corpus with -merge=1.
fuzz-long: fuzz-build
	$(MAKE) --no-print-directory fuzz-run FUZZ_RUN_SECONDS=$(FUZZ_LONG_SECONDS)

fuzz-build:
	CC=clang CXX=clang++ cmake -S . -B $(BUILD)/fuzz -G Ninja -DMC_BUILD_FUZZ=ON -DMC_SANITIZE=address,undefined
	cmake --build $(BUILD)/fuzz -j $(JOBS)

fuzz-run:
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(BUILD)/fuzz/corpus_$$t; \
	  $(BUILD)/fuzz/$${t}_fuzz -max_total_time=$(FUZZ_RUN_SECONDS) -max_len=4096 -print_final_stats=1 \
	    -artifact_prefix=$(BUILD)/fuzz/ \
	    $(BUILD)/fuzz/corpus_$$t fuzz/corpus/$$t 2>&1 | grep -E "^(Done|stat::number_of_executed_units)|ERROR|SUMMARY|Test unit written" ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done

# The installed library works from another CMake project (find_package).
# Installed from the build the C++ tests ran on (the same library and rules).
test-install: cpp
	rm -rf $(BUILD)/prefix
	cmake --install $(BUILD)/cpp --prefix $(CURDIR)/$(BUILD)/prefix
	cmake -S examples/cmake_consumer -B $(BUILD)/consumer -G Ninja -DCMAKE_PREFIX_PATH=$(CURDIR)/$(BUILD)/prefix
	cmake --build $(BUILD)/consumer
	$(BUILD)/consumer/consumer_example
	# The package as a user installs it: pip in a fresh venv, no make, no
	# torch, no Mooncake wheel (build requirements and numpy from PyPI).
	rm -rf $(BUILD)/pip-venv
	python3 -m venv $(BUILD)/pip-venv
	$(BUILD)/pip-venv/bin/python -m pip install -q -C build-dir=$(BUILD)/python-pip .
	$(BUILD)/pip-venv/bin/python tests/install_check.py

test-python: python-package
	$(PY) -m pytest -q tests/python

# A venv of its own for SGLang's real code on the CPU: requirements-sglang.txt
# is a complete lock installed with --no-deps (sglang's own requirements would
# pull its CUDA stack). This package goes in as python-package's wheel.
$(SGLANG_VENV)/.deps: requirements-sglang.txt
	python3 -m venv $(SGLANG_VENV)
	$(SGLANG_PY) -m pip install -q pip==26.3
	$(SGLANG_PY) -m pip install -q --no-deps -r requirements-sglang.txt
	touch $@

sglang-venv: $(SGLANG_VENV)/.deps python-package
	$(SGLANG_PY) -m pip install -q --no-deps --force-reinstall $(WHEEL_DIR)/mooncake_connector-*.whl

test-sglang: sglang-venv
	$(SGLANG_PY) -m pytest -q tests/sglang

# The stress test for longer than make test runs it (STRESS_SECONDS, default 600).
stress: setup
	STRESS_SECONDS=$${STRESS_SECONDS:-600} $(PY) -m pytest -q -s tests/python/test_stress.py

# The soak with faults for longer than make test runs it (SOAK_SECONDS, default 3600).
soak: setup
	SOAK_SECONDS=$${SOAK_SECONDS:-3600} $(PY) -m pytest -q -s tests/python/test_soak.py

# The performance harness. First the cold start (bench/cold_start.py, COLD_ARGS):
# the first load of a new process, ours and the raw wheel's, medians of
# alternated samples. Then every load and save path side by side, in the three
# deployment modes (bench/bench.py; table, bench/results/bench.json and charts).
# The quick size by default; BENCH_ARGS=--full for a model of at least 1 GiB.
# Then bench/bench_tp.py: a ~1 GiB checkpoint loaded at TP 2, cooperative vs
# every rank fetching everything vs the disk loader's reads (BENCH_TP_ARGS).
bench: setup
	@mkdir -p $(BUILD)
	$(PY) bench/cold_start.py $(COLD_ARGS) 2> $(BUILD)/bench.stderr.log || { tail -n 40 $(BUILD)/bench.stderr.log; exit 1; }
	$(PY) bench/bench.py $(BENCH_ARGS) 2>> $(BUILD)/bench.stderr.log || { tail -n 40 $(BUILD)/bench.stderr.log; exit 1; }
	$(PY) bench/bench_tp.py $(BENCH_TP_ARGS) 2>> $(BUILD)/bench.stderr.log || { tail -n 40 $(BUILD)/bench.stderr.log; exit 1; }

# SGLang's own loaders over mooncake:// (bench/sglang_path.py, SGLANG_BENCH_ARGS):
# its KV path filled in place by the plugin and copied, its load_weights path,
# the raw wheel doing an engine's work, its disk loader; each sample a new process.
bench-sglang: sglang-venv
	@mkdir -p $(BUILD)
	$(SGLANG_PY) bench/sglang_path.py $(SGLANG_BENCH_ARGS) 2> $(BUILD)/bench.stderr.log || { tail -n 40 $(BUILD)/bench.stderr.log; exit 1; }

# Google Benchmark micro-benchmarks of the format, checksum and copy path.
bench-micro: cpp
	$(BUILD)/cpp/micro_bench --benchmark_out=bench/results/micro_bench.json --benchmark_out_format=json

# The narrower benchmarks: memory:// against memcpy by size, checksum costs.
bench-more: setup
	$(PY) bench/bench_memory.py
	$(PY) bench/bench_integrity.py 2> $(BUILD)/bench.stderr.log || { tail -n 40 $(BUILD)/bench.stderr.log; exit 1; }

# Where a load's time goes (perf record on our load_into and on the raw wheel's
# batch_get_into, in each deployment mode): bench/results/profile_*.txt.
PROFILE_MODES ?= own tcp client
bench-profile: setup
	@mkdir -p $(BUILD)
	for mode in $(PROFILE_MODES); do for row in load_into raw; do \
	  $(PY) bench/profile_load.py --mode $$mode --row $$row 2>> $(BUILD)/bench.stderr.log || exit 1; done; done

clean:
	rm -rf $(BUILD)
