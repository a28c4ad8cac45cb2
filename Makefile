# The front door. `make demo` and `make test` are the two commands: each installs the Debian
# packages it needs when missing (tools/install_deps.sh), builds (Release) into build/ and runs.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

# Debian packages the build needs (README explains each); every build target installs the
# missing ones first.
DEB_PACKAGES := cmake g++ make pkg-config libcxxopts-dev nlohmann-json3-dev libgtest-dev \
                libgmock-dev libbenchmark-dev libopenblas-dev libopenblas-openmp-dev libomp-dev \
                libpcre2-dev clang-format

.PHONY: all build configure test demo bench deps clean

all: build

configure: deps
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

# After the suite, the emulated kernel tests are built and run again under ThreadSanitizer and
# under ASan + UBSan (in $(BUILD_DIR)/build-emu-*); any report fails `make test`.
# `make test SANITIZER_TESTS=0` leaves them out (quicker local runs).
SANITIZER_TESTS ?= 1
test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 900
ifeq ($(SANITIZER_TESTS),1)
	BUILD_ROOT=$(abspath $(BUILD_DIR)) JOBS=$(JOBS) bash tools/emu_sanitizer_tests.sh
endif

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
