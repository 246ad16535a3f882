#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine and runs the whole suite:
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
venv="${MVR_VENV:-.venv}"
if command -v npm >/dev/null; then
  npm ci --prefix clients/node --no-audit --no-fund --loglevel=error
fi
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
HF_HUB_OFFLINE=1 "$venv/bin/python" -m pytest -q "$@"
