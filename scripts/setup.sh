#!/usr/bin/env bash
# Create the virtual environment and install privaudit with its test dependencies.
# torch is pinned to the CPU build first, so the loose range in pyproject.toml
# (which accepts a GPU user's CUDA torch) never pulls a multi-GB CUDA build here.
set -euo pipefail
VENV=${1:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[test,text,datasets,lora,ray]"
touch "$VENV/.installed"
