#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian/Ubuntu machine:
# Debian packages (PostgreSQL 15, Mosquitto, extras given as arguments), uv, and the
# locked Python environment in .venv. Idempotent; safe to run every time.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9

bash scripts/install-system-deps.sh "$@"

if ! command -v uv >/dev/null 2>&1 || [[ "$(uv --version | awk '{print $2}')" != "$UV_VERSION" ]]; then
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

# Use the machine's Python 3.11+; never download an interpreter.
export UV_PYTHON_DOWNLOADS=never
uv sync --frozen --all-extras --quiet
