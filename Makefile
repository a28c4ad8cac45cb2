# The front door. `make` configures and builds (Release) into build/; `make test` runs ctest.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

# Debian packages the build needs; `make deps` installs the missing ones (README explains each).
DEB_PACKAGES := cmake g++ make pkg-config libcxxopts-dev nlohmann-json3-dev libgtest-dev \
                libgmock-dev libbenchmark-dev libopenblas-dev libopenblas-openmp-dev libomp-dev \
                libpcre2-dev

.PHONY: all build configure test demo bench deps clean

all: build

configure:
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
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "all build dependencies are installed"; fi

clean:
	rm -rf $(BUILD_DIR)
