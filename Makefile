# Two commands on a fresh machine: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve cluster test test-long lint system-packages notebook docs bench soak mutation mutation-engine clean distclean

# The Python the project needs; a .venv made by another (or broken) is made again, saying so.
PYTHON_OK := import sys; sys.exit(sys.version_info < (3, 10))

$(STAMP): pyproject.toml
	@$(PYTHON) -c '$(PYTHON_OK)' 2>/dev/null || { \
	  echo "gradbook needs Python 3.10 or newer; '$(PYTHON)' is $$($(PYTHON) --version 2>/dev/null || echo "not found")." \
	     "Name another: make $(MAKECMDGOALS) PYTHON=python3.11" >&2; exit 1; }
	@if [ -e $(VENV) ] && ! $(PY) -c '$(PYTHON_OK)' 2>/dev/null; then \
	  echo "$(VENV) was made by a Python that cannot run gradbook (or is broken): making it again" >&2; \
	  rm -rf $(VENV); fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# ARGS: flags of `gradbook serve` (or `cluster`), e.g. make serve ARGS="--port 9000 --kernels 4"
ARGS ?=

# A development command: the API notebook is reloaded when it is saved (--reload).
serve: $(STAMP)
	$(VENV)/bin/gradbook serve --reload $(ARGS)

# Several replicas behind HAProxy over one PostgreSQL store (service/app/cluster.py says how):
# GRADBOOK_REPLICAS (2), GRADBOOK_PORT (8888: the balancer; replicas on the next ports),
# GRADBOOK_PG_PORT (55432), and every other GRADBOOK_* setting, passed to each replica.
cluster: $(STAMP)
	@bash tools/system-packages.sh postgresql haproxy
	$(VENV)/bin/gradbook cluster $(ARGS)

# Debian packages the tests and `make cluster` need (chromium, chromium-driver, postgresql,
# haproxy): installed when missing and we are root, else named; silent when none is missing.
system-packages:
	@bash tools/system-packages.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint system-packages
	$(PY) -m pytest -n 2 --dist loadgroup -m "not long"

# The tests marked `long` (minutes each): Schemathesis with its default options, unconfigured,
# against a service without a token and one with a token (tests/test_fuzz_defaults.py).
test-long: $(STAMP) system-packages
	$(PY) -m pytest -n 2 --dist loadgroup -m long

# JUPYTER_PORT: 8889 by default, so it runs beside `make serve` (8888).
JUPYTER_PORT ?= 8889

notebook: $(STAMP)
	$(VENV)/bin/jupyter notebook --ServerApp.root_dir=notebooks --ServerApp.port=$(JUPYTER_PORT) \
	  --ServerApp.port_retries=0 $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# Execute every notebook at its default parameters (papermill, from notebooks/), then render the
# book with Sphinx + MyST-NB (tools/build_book.py, book/conf.py): build/html/index.html, pages in
# reading order with previous/next links, search and equations that all work offline.
docs: $(STAMP)
	$(PY) tools/build_book.py

# The bench extra (falcon, gunicorn) is for bench/bench_gateway.py's no-kernel floor; that
# benchmark also needs wrk (Debian package `wrk`) and says so if it is missing.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/bench_backprop.py
	$(PY) bench/bench_service.py
	$(PY) bench/bench_admission.py
	$(PY) bench/bench_bounds.py
	$(PY) bench/bench_gateway.py

# Soak and fault test, not part of `make test` (which runs a 15-second one, tests/test_soak.py):
# 32 clients for 60 s while a kernel is SIGKILLed every 10 s and the whole service once; prints
# its figures and fails if any check does (bench/soak.py says what it checks).
soak: $(STAMP)
	$(PY) bench/soak.py

# Mutation testing, not part of `make test` nor CI, in two parts:
# - mutmut (about 7 minutes on 2 cores) mutates gradbook/, service/app/inputs.py, service/gateway/errors.py
#   ([tool.mutmut] in pyproject.toml), runs the fast tests that call each mutated function, and the
#   summary prints the share killed per module. Each run starts afresh: mutmut's cache would keep
#   survivors that new or changed tests now kill.
# - the engine (service/gateway/engine.py, service/gateway/runner.py) runs in the gateway and its kernels, which
#   mutmut's mutants never reach: tests/mutation/engine_mutants.py plants its bugs one at a time,
#   each in a copy of the tree, and runs the engine's tests against each (10-15 minutes on 2
#   cores); `make mutation-engine` runs this part alone. ARGS: its options, e.g. ARGS="--list".
MUTMUT_STAMP := $(VENV)/.mutmut-installed

$(MUTMUT_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,mutation]'
	touch $(MUTMUT_STAMP)

mutation: $(MUTMUT_STAMP)
	rm -rf mutants
	$(VENV)/bin/mutmut run
	@echo
	$(PY) tests/mutation/summary.py; status=$$?; echo; \
	  $(PY) tests/mutation/engine_mutants.py $(ARGS) && exit $$status

mutation-engine: $(STAMP)
	$(PY) tests/mutation/engine_mutants.py $(ARGS)

clean:
	rm -rf build .pytest_cache .ruff_cache mutants

# clean, and the virtual environment too (the models in .gradbook stay)
distclean: clean
	rm -rf $(VENV)
