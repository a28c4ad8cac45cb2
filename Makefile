# The front door. `make demo` and `make test` are the two commands: each installs the Debian
# packages it needs when missing (tools/install_deps.sh), builds (Release) into build/ and runs.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

# Debian packages the build needs (README explains each); every build target installs the
# missing ones first.
DEB_PACKAGES := cmake g++ make pkg-config libcxxopts-dev nlohmann-json3-dev libgtest-dev \
                libgmock-dev libbenchmark-dev libopenblas-dev libopenblas-openmp-dev libomp-dev \
                libpcre2-dev clang-format clang-14 libclang-rt-14-dev

.PHONY: all build configure test demo bench fuzz deps clean

all: build

configure: deps
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

# After the suite, the emulated kernel tests are built and run again under ThreadSanitizer and
# under ASan + UBSan (in $(BUILD_DIR)/build-emu-*); any report fails `make test`.
# `make test SANITIZER_TESTS=0` leaves them out (quicker local runs).
# Then the fuzz targets of the file parsers (tests/fuzz, clang 14 + libFuzzer, ASan + UBSan, in
# $(BUILD_DIR)/build-fuzz) run 10 s each, so a target that no longer builds or crashes at once
# fails `make test`; `make test FUZZ_TESTS=0` leaves them out.
SANITIZER_TESTS ?= 1
FUZZ_TESTS ?= 1
test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 900
ifeq ($(SANITIZER_TESTS),1)
	BUILD_ROOT=$(abspath $(BUILD_DIR)) JOBS=$(JOBS) bash tools/emu_sanitizer_tests.sh
endif
ifeq ($(FUZZ_TESTS),1)
	BUILD_ROOT=$(abspath $(BUILD_DIR)) JOBS=$(JOBS) FUZZ_SECONDS=10 bash tools/fuzz_smoke.sh
endif

# Every fuzz target for FUZZ_SECONDS seconds each, FUZZ_PARALLEL at once (findings in
# $(BUILD_DIR)/build-fuzz/findings).
FUZZ_SECONDS ?= 60
FUZZ_PARALLEL ?= 1
fuzz: deps
	BUILD_ROOT=$(abspath $(BUILD_DIR)) JOBS=$(JOBS) FUZZ_SECONDS=$(FUZZ_SECONDS) \
	  FUZZ_PARALLEL=$(FUZZ_PARALLEL) bash tools/fuzz_smoke.sh

# The demo needs only the binary, not the tests and benchmarks.
demo: configure
	cmake --build $(BUILD_DIR) --target minitron -j $(JOBS)
	bash tools/demo.sh $(BUILD_DIR)

bench: build
	bash bench/run_cpu.sh $(BUILD_DIR)

deps:
	@bash tools/install_deps.sh $(DEB_PACKAGES)

clean:
	rm -rf $(BUILD_DIR)
