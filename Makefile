# HOBBIT build. `make run` and `make test` do all set-up on a fresh machine.
#
#   make vendor        vendor/llama.cpp from the pinned sdist + patches/ (and the stock worktree)
#   make build         patched llama.cpp + csrc/ -> build/ (GPU=cuda adds the CUDA backend;
#                      CMAKE_ARGS="..." passes more cmake options)
#   make build-stock   unpatched llama.cpp -> build-stock/ (reference and baseline)
#   make venv          .venv with llama-cpp-python (no bundled llama.cpp), gguf, hobbit
#   make patches       export vendor/llama.cpp commits above `pristine` back to patches/
#                      (PATCHES_OUT=DIR exports into DIR instead, leaving patches/ alone)
#   make run           generate with the embedded default model
#   make test          the test suite (CI=true: a missing dependency fails, never skips),
#                      with a coverage report of the Python code in out/coverage/; it builds
#                      the ASan and TSan variants too, which tests/test_sanitizers.py runs
#   make sanitize      build/ variants with AddressSanitizer and ThreadSanitizer, run their tests
#   make test-cuda     on a machine with an NVIDIA GPU: CUDA build in build-cuda/ and its checks
#   make bench-gpu     then the GPU tier's benchmark (scripts/bench-gpu.sh)

include vendor/pin.mk

SHELL      := /bin/bash
PYTHON     ?= python3
VENV       := .venv
VPY        := $(VENV)/bin/python
JOBS       ?= $(shell nproc)
GPU        ?=
BUILD_TYPE ?= Release

export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := 1

CMAKE_COMMON := $(if $(shell command -v ninja),-G Ninja,) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DBUILD_SHARED_LIBS=ON \
	-DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
	-DLLAMA_BUILD_IS_DEV=OFF -DGGML_CCACHE=ON
ifeq ($(GPU),cuda)
CMAKE_COMMON += -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$(or $(CUDA_ARCH),90) -DGGML_CUDA_FA=OFF
endif
# more cmake options, as llama-cpp-python takes them (e.g. CMAKE_ARGS=-DGGML_CUDA_NO_VMM=ON where
# the CUDA driver library is missing: a machine without a GPU)
ifneq ($(CMAKE_ARGS),)
CMAKE_COMMON += $(CMAKE_ARGS)
endif
TARGETS := llama ggml llama-completion llama-bench llama-perplexity llama-quantize test-backend-ops
HOBBIT_TARGETS := test-hobbit-slots test-hobbit-policy test-hobbit-mmid test-hobbit-mt test-hobbit-cpu-expert test-hobbit-workers hobbit-gpu hobbit-cpu-bench
SAN_TARGETS := llama ggml llama-completion test-hobbit-slots test-hobbit-policy test-hobbit-mmid test-hobbit-mt test-hobbit-cpu-expert test-hobbit-workers
SAN_COMMON := -DHOBBIT_SOURCE_ID=llama-cpp-python-$(LLAMA_CPP_PYTHON_VERSION) -DCMAKE_BUILD_TYPE=RelWithDebInfo

PATCHES_OUT ?= $(CURDIR)/patches

# no AMX where -march=native would enable it: the pinned tree's AMX kernels crash when GCC
# builds them (scripts/amx-flags.sh); CMake takes CFLAGS/CXXFLAGS when it configures a build
AMX_OFF := $(shell scripts/amx-flags.sh)
ifneq ($(AMX_OFF),)
override CFLAGS   := $(strip $(CFLAGS) $(AMX_OFF))
override CXXFLAGS := $(strip $(CXXFLAGS) $(AMX_OFF))
export CFLAGS CXXFLAGS
endif

.PHONY: all vendor vendor-reset build build-stock build-asan build-tsan venv patches run test sanitize test-cuda bench-gpu clean distclean

all: build build-stock venv

vendor:
	@scripts/vendor.sh

vendor-reset:
	@scripts/vendor.sh --reset

# $(1): build dir, $(2): source tree, $(3): extra cmake args, $(4): targets
define cmake_build
	@if [ ! -f $(1)/CMakeCache.txt ] || [ "$$(cat $(1)/.hobbit-config 2>/dev/null)" != "$(2) $(CMAKE_COMMON) $(3) $(CFLAGS) $(CXXFLAGS)" ]; then \
		mkdir -p $(1); rm -rf $(1)/CMakeCache.txt $(1)/CMakeFiles; \
		cmake -S $(2) -B $(1) $(CMAKE_COMMON) $(3) >$(1)/configure.log 2>&1 \
			|| { cat $(1)/configure.log; exit 1; }; \
		echo "$(2) $(CMAKE_COMMON) $(3) $(CFLAGS) $(CXXFLAGS)" > $(1)/.hobbit-config; \
	fi
	@echo "build: $(1) ($(2))"
	@cmake --build $(1) -j $(JOBS) --target $(4) | grep -v '^\[' || true; \
		test $${PIPESTATUS[0]} -eq 0
endef

build: vendor
	$(call cmake_build,build,csrc,-DHOBBIT_SOURCE_ID=llama-cpp-python-$(LLAMA_CPP_PYTHON_VERSION),$(TARGETS) $(HOBBIT_TARGETS))

build-stock: vendor
	$(call cmake_build,build-stock,vendor/llama.cpp-stock,,$(TARGETS))

# the patched tree under AddressSanitizer / ThreadSanitizer (OpenMP off: TSan cannot see it)
build-asan: vendor
	$(call cmake_build,build-asan,csrc,$(SAN_COMMON) -DLLAMA_SANITIZE_ADDRESS=ON,$(SAN_TARGETS))

build-tsan: vendor
	$(call cmake_build,build-tsan,csrc,$(SAN_COMMON) -DLLAMA_SANITIZE_THREAD=ON -DGGML_OPENMP=OFF,$(SAN_TARGETS))

sanitize: build-asan build-tsan venv
	@scripts/sanitize.sh

# the model is the sanitizer's fixture (make sanitize makes it); see scripts/test-cuda.sh
test-cuda: vendor
	@scripts/test-cuda.sh

bench-gpu:
	@scripts/bench-gpu.sh

# llama-cpp-python is built with LLAMA_BUILD=OFF: it ships no llama.cpp of its own and
# hobbit_py points it at build/bin through LLAMA_CPP_LIB_PATH.
$(VENV)/.done: pyproject.toml vendor/pin.mk | vendor
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@$(VPY) -m pip install -q --upgrade pip
	@echo "venv: llama-cpp-python $(LLAMA_CPP_PYTHON_VERSION) (LLAMA_BUILD=OFF), gguf from the vendored tree, hobbit"
	@CMAKE_ARGS="-DLLAMA_BUILD=OFF" $(VPY) -m pip install -q \
		$${HOBBIT_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/hobbit}/llama_cpp_python-$(LLAMA_CPP_PYTHON_VERSION).tar.gz
	@$(VPY) -m pip install -q ./vendor/llama.cpp/gguf-py
	@$(VPY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.done

patches:
	@git -C vendor/llama.cpp diff --quiet HEAD || { echo "patches: commit your edits in vendor/llama.cpp first" >&2; exit 1; }
	@rm -f $(PATCHES_OUT)/*.patch
	@git -C vendor/llama.cpp format-patch -q --zero-commit --no-signature --full-index \
		--no-stat -o $(PATCHES_OUT) pristine..HEAD
	@scripts/vendor.sh
	@echo "patches: $$(ls $(PATCHES_OUT)/*.patch 2>/dev/null | wc -l) patch(es) in $(PATCHES_OUT)/"

run: build venv
	@$(VPY) -m hobbit_py.default_run

# CI=true turns a test's missing dependency into a failure (tests/conftest.py `require`)
test: build build-stock build-asan build-tsan venv
	@rm -rf out/coverage && mkdir -p out/coverage
	@CI=true COVERAGE_FILE=$(CURDIR)/out/coverage/.coverage $(VPY) -m pytest -q \
		--cov --cov-report=term:skip-covered --cov-report=html:out/coverage/html tests

clean:
	rm -rf build build-stock build-asan build-tsan

distclean: clean
	rm -rf vendor/llama.cpp vendor/llama.cpp-stock $(VENV)
