#!/usr/bin/env bash
# Regenerate the committed test artefacts under tests/models/ and the bundled Neo demos.
# Needs the tool venvs (scripts/tools/make-venv.sh gluoncv|tvm|ultralytics); CI never runs this,
# it uses the committed files. Deterministic: fixed seeds, fixed compile settings.
#   scripts/tools/make_test_models.sh [gluoncv] [torch] [demos]   (default: all three)
# (torch: the Ultralytics and torchvision exports, both made in the ultralytics venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
GLUON=.tools/gluoncv/bin/python
TVM=.tools/tvm/bin/python
ULTRA=.tools/ultralytics/bin/python
parts="${*:-gluoncv torch demos}"
want() { case " $parts " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
need() {
  [ -x "$1" ] || { echo "error: $1 missing: run scripts/tools/make-venv.sh $2 first" >&2; exit 1; }
}
want gluoncv && { need "$GLUON" gluoncv; need "$TVM" tvm; }
want demos && need "$TVM" tvm
want torch && need "$ULTRA" ultralytics
work=.tools/work
mkdir -p "$work"
versions() { "$1" -m pip list --format=freeze 2>/dev/null | grep -iE "^($2)==" | tr '\n' ' '; }
GV=$(want gluoncv && versions "$GLUON" "mxnet|gluoncv|numpy|onnx" || true)
TV=$(versions "$TVM" "hhb-tvm|mxnet|numpy|onnx" 2>/dev/null || true)
UV=$(want torch && versions "$ULTRA" "ultralytics|torch|torchvision|onnx|onnxslim" || true)
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
  cp connector/demos/demo-ssd/labels.txt "$out/"
  if [ "$3" = CHW ]; then  # the bare network: normalisation is the caller's job, as on a Jetson compile
    printf 'mean: [123.675, 116.28, 103.53]\nstd: [58.395, 57.12, 57.375]\n' > "$out/model.yaml"
  fi
  python3 scripts/tools/manifest.py "$out" --seed $SEED --tools "$GV$TV" \
    --made-by "gluoncv_export.py --arch $1 --size $2 --layout $3 --seed $SEED; tvm_compile.py mxnet --arch $4" >/dev/null
}
onnx_one() {  # arch size layout name
  local out="tests/models/$4"
  rm -rf "$out"; mkdir -p "$out"
  cp "$work/$1-$2-$3/model.onnx" connector/demos/demo-ssd/labels.txt "$out/"
  python3 scripts/tools/manifest.py "$out" --seed $SEED --tools "$GV" \
    --made-by "gluoncv_export.py --arch $1 --size $2 --layout $3 --seed $SEED --onnx (mx.onnx.export_model)" >/dev/null
}

if want gluoncv; then
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
fi

if want torch; then
  for m in yolov8n yolo11n yolov5nu; do
    YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$work/ultralytics-config" \
      "$ULTRA" scripts/tools/ultralytics_export.py --model $m --imgsz 256 --seed $SEED --out "$work/$m" >/dev/null
    kinds="raw nms"
    [ $m = yolov5nu ] && kinds=raw  # the same anchor-free head as v8: its NMS export adds nothing new
    for k in $kinds; do
      out="tests/models/ultralytics-$m-256-$k"
      rm -rf "$out"; mkdir -p "$out"
      cp "$work/$m/$k/model.onnx" "$work/$m/$k/labels.txt" "$out/"
      python3 scripts/tools/manifest.py "$out" --seed $SEED --tools "$UV" \
        --made-by "ultralytics_export.py --model $m --imgsz 256 --seed $SEED ($k: export(format='onnx'$([ $k = nms ] && echo ", nms=True, conf=0.25, iou=0.45")))" >/dev/null
    done
  done
  for a in ssd retinanet; do
    out="tests/models/torchvision-$a-320"
    rm -rf "$out"
    "$ULTRA" scripts/tools/torchvision_export.py --arch $a --size 320 --seed $SEED --out "$out" >/dev/null 2>&1
    python3 scripts/tools/manifest.py "$out" --seed $SEED --tools "$UV" \
      --made-by "torchvision_export.py --arch $a --size 320 --seed $SEED (torch.onnx.export(model, [image]))" >/dev/null
  done
fi

if want demos; then
  for m in demo-ssd demo-yolov3; do
    out="connector/demos/$m-neo"
    rm -rf "$out"
    "$TVM" scripts/tools/tvm_compile.py onnx-demo "connector/demos/$m/model.onnx" "$out" 2>&1 | quiet
    rm -f "$out/reference.npz"  # the demo tests compare against ONNX Runtime on real pictures instead
    cp "connector/demos/$m/labels.txt" "$out/"
    python3 scripts/tools/manifest.py "$out" --tools "$TV" --seed - \
      --made-by "tvm_compile.py onnx-demo connector/demos/$m/model.onnx (sha256 $(sha256sum connector/demos/$m/model.onnx | cut -c1-16)...)" >/dev/null
  done
  # The trained SSD demo for the ARM platforms (scripts/arm/run-arm.sh; ARMv7 has no ONNX Runtime,
  # so there this is the demo model).
  for arch in aarch64 armv7; do
    out="connector/demos/demo-ssd-neo-$arch"
    rm -rf "$out"
    "$TVM" scripts/tools/tvm_compile.py onnx-demo connector/demos/demo-ssd/model.onnx "$out" --arch $arch 2>&1 | quiet
    rm -f "$out/reference.npz"
    cp connector/demos/demo-ssd/labels.txt "$out/"
    python3 scripts/tools/manifest.py "$out" --tools "$TV" --seed - \
      --made-by "tvm_compile.py onnx-demo connector/demos/demo-ssd/model.onnx --arch $arch (sha256 $(sha256sum connector/demos/demo-ssd/model.onnx | cut -c1-16)...)" >/dev/null
  done
fi
du -sh tests/models/* connector/demos/* 2>/dev/null
