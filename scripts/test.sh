#!/usr/bin/env bash
# Set up .venv with every extra and run the whole test suite, then the runtime tests under Python 3.7
# and 3.8 (scripts/test-old-pythons.sh); this is what CI runs. With arguments: only pytest, with them.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-venv.sh all
if [ $# -gt 0 ]; then exec .venv/bin/python -m pytest -q "$@"; fi
.venv/bin/python -m pytest -q
# The whole suite also runs the runtime/SDK/Lambda tests under Python 3.7 and 3.8 (Greengrass V1's).
./scripts/test-old-pythons.sh
