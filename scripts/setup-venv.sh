#!/usr/bin/env bash
# Create (or reuse) .venv and install this package with the given extras, e.g. `onnx,dlr`.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-onnx,dlr}"
python="${PYTHON:-python3}"
start=$SECONDS
# Said first, before anything slow: pip's own output goes to a log shown only on failure.
if [ -x .venv/bin/python ]; then
  echo "setup-venv: checking .venv has this package with extras [${extras}] (a few seconds)..."
else
  echo "setup-venv: creating .venv with this package and extras [${extras}] (first run ~1 min)..."
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 8))' 2>/dev/null; then
  echo "error: $python is missing or older than Python 3.8" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv || { echo "error: cannot create .venv (on Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# pip's and setuptools' chatter goes to a log that is shown only when the install fails.
if ! { .venv/bin/python -m pip install --quiet --upgrade pip &&
       .venv/bin/python -m pip install --quiet -e ".[${extras}]"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "error: installing this package with extras [${extras}] into .venv failed (output above)" >&2
  exit 1
fi
echo "setup-venv: .venv ready ($((SECONDS - start)) s)"
