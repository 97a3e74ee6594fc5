#!/usr/bin/env bash
# Build one tool venv under .tools/<name> (git-ignored): heavy exporters/compilers that neither the
# runtime nor CI needs. Idempotent: a venv whose stamp matches its requirement list is reused.
#   scripts/tools/make-venv.sh gluoncv|tvm|ultralytics
set -euo pipefail
cd "$(dirname "$0")/../.."
name="${1:?usage: $0 gluoncv|tvm|ultralytics}"
pyroot="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions"
case "$name" in
  gluoncv)
    # mxnet 1.9.1 needs numpy < 1.24 (np.bool); gluoncv 0.10.5.post0 is the last release.
    python="$pyroot/3.11.7/bin/python"
    reqs=(mxnet==1.9.1 numpy==1.23.5 gluoncv==0.10.5.post0 onnx==1.16.2 protobuf==4.25.3) ;;
  tvm)
    # hhb-tvm 3.2.3 is a Relay-era TVM (0.16) with the graph executor; it imports tflite and tqdm
    # without declaring them. mxnet lets relay.frontend.from_mxnet read GluonCV's symbol files.
    python="$pyroot/3.10.13/bin/python"
    reqs=(hhb-tvm==3.2.3 tflite tqdm numpy==1.23.5 mxnet==1.9.1 onnx==1.16.2 onnxruntime protobuf==4.25.3) ;;
  ultralytics)
    # torch comes from the local wheel (pip finds it via /opt/wheels); torchvision must match it.
    python="$pyroot/3.11.7/bin/python"
    reqs=(torch==2.13.0 "torchvision<=0.29.1" ultralytics onnx onnxslim onnxruntime) ;;
  *) echo "error: unknown tool venv '$name' (gluoncv, tvm or ultralytics)" >&2; exit 2 ;;
esac
[ -x "$python" ] || { echo "error: $python not found (pyenv install ${python#$pyroot/})" >&2; exit 1; }
venv=".tools/$name"
stamp="$venv/.requirements"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${reqs[*]}" ]; then
  echo "$venv is up to date"; exit 0
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "${reqs[@]}"
echo "${reqs[*]}" > "$stamp"
echo "$venv ready ($("$venv/bin/python" -V))"
