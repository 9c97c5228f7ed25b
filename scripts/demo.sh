#!/usr/bin/env bash
# Install everything, start PostgreSQL and Mosquitto in .rpm-data, and run the whole
# system with a simulated patient fleet. Extra arguments go to `rpm demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh
exec .venv/bin/rpm demo "$@"
