# Two entry points: `make demo` (the end-to-end CED demo) and `make test` (the test suite).
# Both create .venv on first use and install everything into it from the package registries.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo demo-quick bench fuzz asan clean

$(STAMP): setup.py pyproject.toml $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch; pinned so pip never pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[train,test]"
	# The HEAR 2021 validator: its torch path needs none of its dependencies (tensorflow).
	$(PY) -m pip install -q --no-deps hearvalidator
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/ced-train demo --out demo-out

demo-quick: install
	$(VENV)/bin/ced-train demo --quick --out demo-out/quick

bench: install
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/decode.py
	$(PY) benchmarks/frontend.py
	$(PY) benchmarks/model.py
	$(PY) benchmarks/pipeline.py
	$(PY) benchmarks/sparse.py
	$(PY) benchmarks/long_files.py
	$(PY) -m benchmarks.vs_original
	$(PY) -m benchmarks.roofline

# Fuzzing (tests/cedstore/fuzz_store.py): `make fuzz FUZZ_SECONDS=3600`, or FUZZ_INPUTS=100000;
# findings (crash, hang, disagreement between the core and the reference) go to fuzz-crashes/.
FUZZ_SECONDS ?= 60
FUZZ_INPUTS  ?=
FUZZ_SEED    ?= 0
FUZZ_JOBS    ?= 1
FUZZ_LIMIT   := $(if $(FUZZ_INPUTS),--inputs $(FUZZ_INPUTS),--seconds $(FUZZ_SECONDS))

fuzz: install
	$(PY) tests/cedstore/fuzz_store.py $(FUZZ_LIMIT) --seed $(FUZZ_SEED) --jobs $(FUZZ_JOBS) --crashes fuzz-crashes

# The core built with AddressSanitizer and UndefinedBehaviorSanitizer into build/asan (a copy of
# the package: the in-place cedstore/_core*.so stays as it is), then the cedstore tests and
# ASAN_FUZZ_INPUTS more fuzz inputs against it. CPython is not instrumented: the ASan runtime is
# preloaded (with libstdc++, so that ASan can intercept C++ throws), and leak detection is off
# (the interpreter keeps memory until exit on purpose).
CXX              ?= g++
ASAN_DIR         := build/asan
ASAN_FLAGS       := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -O1 -g
ASAN_FUZZ_INPUTS ?= 2000
ASAN_PYTEST_ARGS ?=
ASAN_ENV = PYTHONPATH=$(CURDIR)/$(ASAN_DIR) PYTHONSAFEPATH=1 \
	LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libstdc++.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

ASAN_OBJS   := $(patsubst csrc/%.cpp,$(ASAN_DIR)/obj/%.o,$(wildcard csrc/*.cpp))
PYBIND11    := $(VENV)/.pybind11

$(PYBIND11): | $(STAMP)
	$(PY) -m pip install -q pybind11
	touch $@

$(ASAN_DIR)/obj/%.o: csrc/%.cpp $(wildcard csrc/*.h*) | $(PYBIND11)
	mkdir -p $(@D)
	$(CXX) $(ASAN_FLAGS) -std=c++17 -fPIC $$($(PY) -m pybind11 --includes) -Icsrc -c $< -o $@

$(ASAN_DIR)/.built: $(ASAN_OBJS)
	mkdir -p $(ASAN_DIR)/cedstore
	$(CXX) $(ASAN_FLAGS) -shared $^ \
		-o $(ASAN_DIR)/cedstore/_core$$($(PY) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
	touch $@

asan: $(ASAN_DIR)/.built
	rm -f $(ASAN_DIR)/cedstore/*.py && cp cedstore/*.py $(ASAN_DIR)/cedstore/
	$(ASAN_ENV) $(PY) -c "import cedstore._core as c; assert '/$(ASAN_DIR)/' in c.__file__, c.__file__"
	$(ASAN_ENV) $(PY) -m pytest -q -p no:cacheprovider tests/cedstore $(ASAN_PYTEST_ARGS)
	$(ASAN_ENV) $(PY) tests/cedstore/fuzz_store.py --inputs $(ASAN_FUZZ_INPUTS) --seed 1 --crashes fuzz-crashes/asan

clean:
	rm -rf build cedstore/_core*.so *.egg-info
