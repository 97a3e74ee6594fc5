#!/usr/bin/env bash
# Set up .venv, start the local inference service on the bundled demo-ssd detector, call it from a
# second process through the ML SDK on generated sample photos (predictions printed, annotated
# copies in out/demo/), then stop the service.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "demo: set up .venv (first run ~1 min, then seconds), start the inference service on the" \
     "bundled demo-ssd model, call it through the ML SDK on 3 sample photos (~10 s), stop it;" \
     "annotated copies go to out/demo/"
./scripts/setup-venv.sh onnx,dlr
model=$(.venv/bin/python -m connector models | awk '$1 == "demo-ssd" {print $2}')
exec ./scripts/serve-and-call.sh .venv/bin/python "$model" out/demo 3
