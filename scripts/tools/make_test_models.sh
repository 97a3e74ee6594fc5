#!/usr/bin/env bash
# Regenerate the committed GluonCV/Neo test artefacts under tests/models/ (and the bundled DLR demos
# with --demos). Needs the tool venvs (scripts/tools/make-venv.sh gluoncv tvm); CI never runs this,
# it uses the committed files. Deterministic: fixed seeds, fixed compile settings.
#   scripts/tools/make_test_models.sh [--demos]
set -euo pipefail
cd "$(dirname "$0")/../.."
GLUON=.tools/gluoncv/bin/python
TVM=.tools/tvm/bin/python
for py in "$GLUON" "$TVM"; do
  [ -x "$py" ] || { echo "error: $py missing: run scripts/tools/make-venv.sh gluoncv and tvm first" >&2; exit 1; }
done
work=.tools/work
mkdir -p "$work"
versions() { "$1" -m pip list --format=freeze 2>/dev/null | grep -iE "^($2)==" | tr '\n' ' '; }
GV=$(versions "$GLUON" "mxnet|gluoncv|numpy|onnx")
TV=$(versions "$TVM" "hhb-tvm|mxnet|numpy|onnx")
SEED=0
quiet() { grep -v "not in feed graph\|value_info\|warnings.warn\|^WARNING:root:box_nms" || true; }

# name arch size layout: GluonCV export, then its ONNX (--onnx) or Neo compiles
export_one() {  # arch size layout -> $work/<arch>-<size>-<layout>
  local dir="$work/$1-$2-$3"
  "$GLUON" scripts/tools/gluoncv_export.py --arch "$1" --size "$2" --layout "$3" --seed $SEED --onnx --out "$dir" 2>&1 | quiet
}
neo_one() {  # arch size layout cpu name
  local src="$work/$1-$2-$3" out="tests/models/$5"
  rm -rf "$out"
  "$TVM" scripts/tools/tvm_compile.py mxnet "$src" "$out" --arch "$4" 2>&1 | quiet
  cp connector/models/demo-ssd/labels.txt "$out/"
  if [ "$3" = CHW ]; then  # the bare network: normalisation is the caller's job, as on a Jetson compile
    printf 'mean: [123.675, 116.28, 103.53]\nstd: [58.395, 57.12, 57.375]\n' > "$out/model.yaml"
  fi
  python3 scripts/tools/manifest.py "$out" --seed $SEED --tools "$GV$TV" \
    --made-by "gluoncv_export.py --arch $1 --size $2 --layout $3 --seed $SEED; tvm_compile.py mxnet --arch $4" >/dev/null
}
onnx_one() {  # arch size layout name
  local out="tests/models/$4"
  rm -rf "$out"; mkdir -p "$out"
  cp "$work/$1-$2-$3/model.onnx" connector/models/demo-ssd/labels.txt "$out/"
  python3 scripts/tools/manifest.py "$out" --seed $SEED --tools "$GV" \
    --made-by "gluoncv_export.py --arch $1 --size $2 --layout $3 --seed $SEED --onnx (mx.onnx.export_model)" >/dev/null
}

export_one ssd 300 HWC
export_one yolo3 416 HWC
export_one ssd 512 CHW
export_one yolo3 320 CHW
onnx_one ssd 300 HWC gluoncv-ssd-300-onnx
onnx_one yolo3 416 HWC gluoncv-yolo3-416-onnx
neo_one ssd 300 HWC x86_64 neo-ssd-300-nhwc
neo_one yolo3 416 HWC x86_64 neo-yolo3-416-nhwc
neo_one ssd 512 CHW x86_64 neo-ssd-512-nchw
neo_one yolo3 320 CHW x86_64 neo-yolo3-320-nchw
if command -v aarch64-linux-gnu-gcc >/dev/null; then neo_one ssd 300 HWC aarch64 neo-ssd-300-nhwc-aarch64
else echo "skipped aarch64 (apt-get install gcc-aarch64-linux-gnu)" >&2; fi
if command -v arm-linux-gnueabihf-gcc >/dev/null; then neo_one ssd 300 HWC armv7 neo-ssd-300-nhwc-armv7
else echo "skipped armv7 (apt-get install gcc-arm-linux-gnueabihf)" >&2; fi

if [ "${1:-}" = --demos ]; then
  for m in demo-ssd demo-yolov3; do
    out="connector/models/$m-neo"
    rm -rf "$out"
    "$TVM" scripts/tools/tvm_compile.py onnx-demo "connector/models/$m/model.onnx" "$out" 2>&1 | quiet
    rm -f "$out/reference.npz"  # the demo tests compare against ONNX Runtime on real pictures instead
    cp "connector/models/$m/labels.txt" "$out/"
    python3 scripts/tools/manifest.py "$out" --tools "$TV" --seed - \
      --made-by "tvm_compile.py onnx-demo connector/models/$m/model.onnx (sha256 $(sha256sum connector/models/$m/model.onnx | cut -c1-16)...)" >/dev/null
  done
fi
du -sh tests/models/* connector/models/* 2>/dev/null
