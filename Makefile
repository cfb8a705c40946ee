VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean


setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)

demo: setup
	$(VENV)/bin/privaudit demo

lint: setup
	$(VENV)/bin/ruff check privaudit plugins reports tests benchmarks
	$(VENV)/bin/mypy privaudit  # the core, plugin API included

test: setup lint
	bash scripts/install-chromium.sh
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/attacks.py
	$(PY) benchmarks/search.py
	$(PY) benchmarks/cpsample.py
	$(PY) benchmarks/scale.py

clean:
	rm -rf $(VENV) privaudit-runs .pytest_cache test-artifacts
