#!/usr/bin/env bash
# Runs every check: lint, types, unit and integration tests (a real Prefect server,
# real supervisord, real flow runs). Sets up .venv first if needed.
# Arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
cd "$ROOT"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 \
    | grep -v "^WARNING: Location" || true
export PATH="$VENV/bin:$PATH"

echo "==> ruff"
ruff check .
ruff format --check .
echo "==> mypy"
mypy
echo "==> pytest"
pytest "$@"
