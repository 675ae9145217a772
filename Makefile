# opensips-fs
#
#   make run     create .venv if needed, install, run on etc/opensips-fs.cfg (Ctrl-C stops)
#                (EXTRAS=mysql, EXTRAS=postgres or EXTRAS=mysql,postgres: the DB drivers too)
#   make test    same venv with the test extras, run the test suite (TESTS=tests/test_x.py)
#   make lint    same venv with the test and lint extras, run flake8 and mypy (settings in setup.cfg;
#                every function annotated except in the test modules, whose bodies are checked too)
#   make check   check the configuration file (CONFIG=...)
#   make demo    simulator + opensips-fs + an E_FREESWITCH printer, until Ctrl-C
#   make bench-mi  MI benchmark (HTTP, FIFO, datagram) against BASELINE (a checkout)
#   make clean   remove the venv and build leftovers (keeps var/, the SQLite data)
#
# The venv is (re)installed only when setup.cfg or setup.py change (stamp
# files), so every target is quick once set up. The install is editable:
# code changes need no reinstall.

PYTHON      ?= python3
VENV        ?= .venv
CONFIG      ?= etc/opensips-fs.cfg
ARGS        ?=
PYTEST_ARGS ?= -q
TESTS       ?= tests
CPS         ?= 2
EXTRAS      ?=
BASELINE    ?=
BENCH_ARGS  ?=

comma      := ,
BIN        := $(VENV)/bin
RUN_STAMP  := $(VENV)/.installed-run$(if $(EXTRAS),-$(subst $(comma),-,$(EXTRAS)))
TEST_STAMP := $(VENV)/.installed-test
LINT_STAMP := $(VENV)/.installed-lint
DEPS       := setup.cfg setup.py
PIP        := $(BIN)/python -m pip install --disable-pip-version-check -q

.DEFAULT_GOAL := help
.PHONY: help run test lint check demo bench-mi clean

help:
	@sed -n 's/^#   //p' Makefile

# Debian/Ubuntu keep ensurepip in the python3-venv package; without it, make
# the venv without pip and let the system's pip install pip into it.
$(BIN)/python:
	@echo "creating $(VENV) with $(PYTHON)"
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	    rm -rf $(VENV) && $(PYTHON) -m venv --without-pip $(VENV) && \
	    $(PYTHON) -m pip --python $(BIN)/python install -q --disable-pip-version-check pip; } || { \
	    rm -rf $(VENV); \
	    echo "cannot create $(VENV): $(PYTHON) has neither ensurepip nor pip (Debian/Ubuntu: apt-get install python3-venv)" >&2; \
	    exit 1; }

# A current setuptools and wheel: editable installs and wheels (pip wheel,
# the package-data test) need them; a new venv may carry old ones.
$(RUN_STAMP): $(DEPS) | $(BIN)/python
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) -e '.$(if $(EXTRAS),[$(EXTRAS)])'
	@touch $@

$(TEST_STAMP): $(DEPS) | $(BIN)/python
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) -e '.[test]'
	@touch $@ $(RUN_STAMP)

$(LINT_STAMP): $(DEPS) | $(BIN)/python
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) -e '.[test,lint]'
	@touch $@ $(TEST_STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	@mkdir -p var
	exec $(BIN)/opensips-fs -f $(CONFIG) $(ARGS)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) $(TESTS)

lint: $(LINT_STAMP)
	$(BIN)/python -m flake8
	$(BIN)/python -m mypy
	$(BIN)/python -m mypy --allow-untyped-defs --allow-incomplete-defs tests

check: $(RUN_STAMP)
	$(BIN)/opensips-fs -c -f $(CONFIG)

demo: $(RUN_STAMP)
	exec $(BIN)/python -m opensips_fs.tools.demo --calls-per-second $(CPS) $(ARGS)

# BASELINE=/path/to/another/checkout adds its figures and the ratios; the
# bench lock keeps two benchmarks from running at once on a shared machine.
bench-mi: $(RUN_STAMP)
	flock $(or $(BENCH_LOCK),/tmp/opensips-fs-bench.lock) $(BIN)/python bench/bench_mi.py \
	    $(if $(BASELINE),--baseline $(BASELINE)) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .mypy_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
