# Fresh-machine entry points (see README):
#   make demo   set up, then export/inspect/emulate/check the bundled example
#   make test   set up, then run the whole test suite
#   make lock   re-resolve the development stack into requirements.lock (tools/lock.py)
# Set-up is idempotent: it re-runs only when requirements.lock, pyproject.toml or this Makefile changes.
# It installs the exact versions in requirements.lock, so every machine and CI get the same stack.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgeq-setup
# torch must come first, and exactly this version: it is a local CPU wheel. Any other request
# may pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
# Debian packages: clang-19 + lld-19 build the freestanding RV32 firmware (Debian's GCC 12 has no RISC-V
# _Float16), qemu-system-misc runs it (qemu-system-riscv32), dtc is for Spike. g++ (csim) and tclsh (TCL
# checks) are installed below when missing.
APT_PACKAGES ?= clang-19 lld-19 qemu-system-misc device-tree-compiler

.PHONY: setup lock demo test lint bench fuzz clean
LOCK   := requirements.lock

setup: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml Makefile
	@command -v g++ >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends g++)
	@command -v tclsh >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends tcl)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$$(grep '^pip==' $(LOCK))"
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

demo: setup
	$(PY) examples/demo.py --out demo_out

# pytest exits 5 when it collects no test; report that plainly instead of failing obscurely.
test: setup
	@$(PY) -m ruff check .
	@$(PY) -m pytest -q -n 2 --durations=15; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

# A fresh resolve of pyproject.toml's ranges (torch first); review the diff of requirements.lock, then commit it.
lock:
	$(PYTHON) -m venv $(VENV)
	$(PY) tools/lock.py

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) bench/emulator.py

# The differential fuzzer at its goal sizes (about an hour on 2 cores); `make test` runs seeded slices of it.
SEED ?= 0
fuzz: setup
	$(PY) bench/fuzz.py --cases 100000 --minutes 30 --seed $(SEED) --backends emulate
	$(PY) bench/fuzz.py --cases 10000 --minutes 30 --seed $(SEED) --backends hls
	$(PY) bench/fuzz.py --cases 10000 --minutes 30 --seed $(SEED) --backends mcu

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache build dist *.egg-info
