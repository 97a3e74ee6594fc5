#!/usr/bin/env bash
# Set up .venv and run the bundled demo-ssd detector on generated sample photos:
# prints one JSON line per image and writes annotated copies to out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-venv.sh onnx,dlr
py=.venv/bin/python
rm -rf out/demo && mkdir -p out/demo/input
mapfile -t samples < <("$py" scripts/make_samples.py out/demo/input 3)
"$py" -m connector infer --draw out/demo "${samples[@]}"
echo "annotated images: $(cd out/demo && ls -1 *.jpg | sed "s|^|out/demo/|" | tr '\n' ' ')"
