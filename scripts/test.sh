#!/usr/bin/env bash
# Install everything, then run the whole check: ruff (lint, format), mypy --strict, the layers
# (import-linter's contracts in pyproject.toml), pytest.
# Tests start their own PostgreSQL and Mosquitto on loopback ports in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."

# docker-compose (no engine) lets the tests validate docker-compose.yml, and haproxy the
# cluster profile's proxy config (haproxy -c); chromium runs the dashboard's browser test
# (driven by the playwright package, which downloads no browser).
bash scripts/bootstrap.sh docker-compose haproxy chromium fonts-dejavu-core

echo "== ruff" && .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy" && .venv/bin/mypy
echo "== layers" && .venv/bin/lint-imports --no-cache
echo "== pytest" && .venv/bin/pytest -q -p no:cacheprovider "$@"
