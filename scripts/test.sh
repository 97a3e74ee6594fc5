#!/usr/bin/env bash
# Set up .venv with every extra and run the whole test suite, then the runtime tests under Python 3.7
# and 3.8 (scripts/test-old-pythons.sh); this is what CI runs. With arguments: only pytest, with them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
  echo "test: set up .venv (first run ~1 min, then seconds), then pytest $*"
else
  # Rough durations on a 2-core x86_64 machine; each phase prints what it really took.
  echo "test: set up .venv (first run ~1 min, then seconds), the main suite (~7.5 min), then the" \
       "runtime tests under Python 3.7 and 3.8 side by side (~4 min; ~5 min the first time)"
fi
./scripts/setup-venv.sh all
if [ $# -gt 0 ]; then exec .venv/bin/python -m pytest -q "$@"; fi
start=$SECONDS
echo "test: main suite (~1380 tests, ~7.5 min; pytest prints a dot per test)..."
.venv/bin/python -m pytest -q
echo "test: main suite passed ($((SECONDS - start)) s)"
# The whole suite also runs the runtime/SDK/Lambda tests under Python 3.7 and 3.8 (Greengrass V1's).
./scripts/test-old-pythons.sh
