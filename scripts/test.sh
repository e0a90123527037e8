#!/usr/bin/env bash
# The README's test command: set up (with test tools), lint, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
PY=${PYTHON:-python3}
$PY -m ruff check neko tests bench
$PY -m ruff format --check neko tests bench
$PY -m pytest -q "$@"
