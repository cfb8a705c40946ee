#!/usr/bin/env bash
# The import-layer contracts of pyproject.toml ([tool.importlinter]), checked with import-linter.
# plugins/ and reports/ are installed as privaudit.plugins and privaudit.reports (setuptools package-dir),
# which grimp cannot see in the source tree: lay the installed tree out with symbolic links and lint that.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
cp -rs "$PWD/privaudit" "$tree/privaudit"
cp -rs "$PWD/plugins" "$tree/privaudit/plugins"
cp -rs "$PWD/reports" "$tree/privaudit/reports"
find "$tree" -name __pycache__ -prune -exec rm -rf {} +
cfg=$PWD/pyproject.toml
cd "$tree" && PYTHONPATH="$tree" "$OLDPWD/$VENV/bin/lint-imports" --no-cache "$cfg"
