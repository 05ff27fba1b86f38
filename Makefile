# Two entry points: `make demo` (the end-to-end CED demo) and `make test` (the test suite).
# Both create .venv on first use and install everything into it from the package registries.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo demo-quick bench clean

$(STAMP): setup.py pyproject.toml $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch; pinned so pip never pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[train,test]"
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

clean:
	rm -rf build cedstore/_core*.so *.egg-info
