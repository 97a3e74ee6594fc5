#!/usr/bin/env bash
# Set up .venv with every extra and run the whole test suite (this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-venv.sh all
exec .venv/bin/python -m pytest -q "$@"
