VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean

# The plugin API and the model layer are type-checked; ruff checks every Python folder.
TYPED := privaudit/api.py privaudit/plugin.py privaudit/testing.py privaudit/params.py privaudit/denoiser.py \
	privaudit/flow.py privaudit/families.py privaudit/images.py privaudit/prompts.py privaudit/errors.py \
	privaudit/results.py privaudit/io.py

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)

demo: setup
	$(VENV)/bin/privaudit demo

lint: setup
	$(VENV)/bin/ruff check privaudit plugins reports tests benchmarks
	$(VENV)/bin/mypy $(TYPED)

test: setup lint
	bash scripts/install-chromium.sh
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/attacks.py
	$(PY) benchmarks/search.py
	$(PY) benchmarks/cpsample.py

clean:
	rm -rf $(VENV) privaudit-runs .pytest_cache test-artifacts
