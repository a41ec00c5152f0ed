# Fresh-machine entry points (see README):
#   make demo   set up, then export/inspect/emulate/check the bundled example
#   make test   set up, then run the whole test suite
# Set-up is idempotent: it re-runs only when pyproject.toml or this Makefile changes.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgeq-setup
# torch must come first, and exactly this version: it is a local CPU wheel. Any other request
# may pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
# Debian packages later backends need (RISC-V clang, QEMU, dtc). g++ (csim) and tclsh (TCL checks) are
# installed above when missing.
APT_PACKAGES ?=

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@command -v g++ >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends g++)
	@command -v tclsh >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends tcl)
	@if [ -n "$(APT_PACKAGES)" ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip check
	touch $(STAMP)

demo: setup
	$(PY) examples/demo.py --out demo_out

# pytest exits 5 when it collects no test; report that plainly instead of failing obscurely.
test: setup
	@$(PY) -m ruff check .
	@$(PY) -m pytest -q -n 2 --durations=15; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) bench/emulator.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache build dist *.egg-info
