#!/usr/bin/env bash
# The four full-size GluonCV model-zoo detectors the issue names, exported and compiled the way a
# user does it: export_block (HWC, preprocess) -> mx.onnx and TVM -> Neo directory (x86_64), then a
# check through the connector. Random weights (pretrained=False: nothing can be downloaded).
# ON DEMAND ONLY (minutes per model, ~100-250 MB of output): never in CI, nothing here is committed.
#   scripts/tools/zoo_models.sh [OUT_DIR (default .tools/zoo)] [model ...]
# ZOO_ARCH=x86_64-avx2 compiles for Haswell and later instead of any x86_64 (SSE2 only).
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-.tools/zoo}"; shift || true
models="${*:-ssd_512_mobilenet1.0_voc ssd_512_resnet50_v1_voc yolo3_mobilenet1.0_voc yolo3_darknet53_voc}"
for py in .tools/gluoncv/bin/python .tools/tvm/bin/python .venv/bin/python; do
  [ -x "$py" ] || { echo "error: $py missing (scripts/tools/make-venv.sh gluoncv|tvm, scripts/setup-venv.sh all)" >&2; exit 1; }
done
log="$out/zoo.log"
mkdir -p "$out"; : > "$log"
step() {  # run a step, its chatter to the log; on failure show the log's tail and stop
  "$@" >> "$log" 2>&1 || { tail -20 "$log" >&2; echo "error: failed: $*" >&2; exit 1; }
}
printf '%-26s %9s %9s %9s  %s\n' model export_s compile_s check_s sizes
for m in $models; do
  t0=$(date +%s.%N)
  step .tools/gluoncv/bin/python scripts/tools/gluoncv_export.py --arch "$m" --size 512 --layout HWC --onnx --out "$out/$m/export"
  t1=$(date +%s.%N)
  step .tools/tvm/bin/python scripts/tools/tvm_compile.py mxnet "$out/$m/export" "$out/$m/neo" --arch "${ZOO_ARCH:-x86_64}"
  t2=$(date +%s.%N)
  mkdir -p "$out/$m/onnx" && ln -sf ../export/model.onnx "$out/$m/onnx/model.onnx"
  for kind in onnx neo; do  # the zoo's class names (VOC), from the export's record
    python3 -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["classes"]))' \
      "$out/$m/export/export.json" > "$out/$m/$kind/labels.txt"
  done
  for kind in onnx neo; do
    .venv/bin/python -m connector check-model "$out/$m/$kind" > "$out/$m/check-$kind.txt" 2>&1 \
      || { echo "check-model failed for $out/$m/$kind:" >&2; cat "$out/$m/check-$kind.txt" >&2; }
  done
  t3=$(date +%s.%N)
  sizes="onnx $(du -h "$out/$m/export/model.onnx" | cut -f1), neo $(du -sh "$out/$m/neo" | cut -f1)"
  printf '%-26s %9.1f %9.1f %9.1f  %s\n' "$m" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" \
    "$(echo "$t3 - $t2" | bc)" "$sizes"
  grep -h "time/inference" "$out/$m/check-onnx.txt" "$out/$m/check-neo.txt" | sed "s/^/    /" || true
done
