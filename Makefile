# Two commands on a fresh machine: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve test lint notebook docs bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(PY) -m service.launch

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -n 2 --dist loadgroup

notebook: $(STAMP)
	$(VENV)/bin/jupyter notebook --notebook-dir=notebooks

# Execute every notebook at its default parameters, then render HTML (LaTeX via MathJax).
docs: $(STAMP)
	mkdir -p build/docs build/html
	for nb in notebooks/*.ipynb; do \
	  $(VENV)/bin/papermill --cwd notebooks "$$nb" "build/docs/$$(basename $$nb)" || exit 1; \
	done
	$(VENV)/bin/jupyter nbconvert --to html --output-dir build/html build/docs/*.ipynb

bench: $(STAMP)
	$(PY) bench/bench_backprop.py
	$(PY) bench/bench_service.py

clean:
	rm -rf build .pytest_cache .ruff_cache
