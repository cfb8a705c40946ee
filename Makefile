VENV ?= .venv
PY := $(VENV)/bin/python
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: setup demo test lint bench bench-quick clean


setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)

demo: setup
	$(VENV)/bin/privaudit demo

lint: setup
	$(VENV)/bin/ruff check privaudit plugins reports tests benchmarks scripts
	$(VENV)/bin/mypy privaudit  # the core, plugin API included
	VENV=$(VENV) bash scripts/lint-imports.sh  # the layer contracts of pyproject.toml: CI fails on an upward import

test: setup lint
	bash scripts/install-chromium.sh
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile  # one worker per core; a file's tests share a worker (and its session fixtures)

bench: setup
	$(PY) benchmarks/attacks.py
	$(PY) benchmarks/search.py
	$(PY) benchmarks/cpsample.py
	$(PY) benchmarks/mitigation_cost.py
	$(PY) benchmarks/scale.py

# every benchmark at tiny sizes (seconds each, timings meaningless): what CI runs (tests/test_benchmarks.py)
bench-quick: setup
	for b in attacks search cpsample mitigation_cost cpsample_gpu_check gpu_sd_check scale scale_gpu_check; do \
		$(PY) benchmarks/$$b.py --quick || exit 1; done

clean:
	rm -rf $(VENV) privaudit-runs .pytest_cache test-artifacts
