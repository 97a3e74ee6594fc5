#!/usr/bin/env bash
# Run the runtime, SDK and Lambda tests under the oldest Pythons we support: 3.7 (Greengrass V1's
# Lambda runtime, Amazon Linux 2) and 3.8. Each gets a throwaway venv (.venv-py37, .venv-py38) with
# what those tests import; vermin alone checks syntax, this runs the code.
#   scripts/test-old-pythons.sh [3.7] [3.8]        (default: both)
# Interpreters: python3.7/python3.8 on PATH, else pyenv's. A missing one is reported and skipped
# (exit 0) unless REQUIRE_OLD_PYTHONS=1. Python 3.7 has no ONNX Runtime >= 1.18 wheel: DLR serves
# there, and the ONNX tests skip themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.7 3.8)
# The tests that exercise connector/ (runtime, service, IPC and its hardening, GGRouter, the feedback
# service a V1 core runs as a Lambda, Lambda entry) and ml_sdk/.
TESTS=(tests/test_params.py tests/model/test_imaging.py tests/service/test_bad_input.py
       tests/model/test_dlr_backend.py tests/model/test_dlr_phone_home.py
       tests/supervision/test_supervisor.py tests/supervision/test_pool.py tests/supervision/test_sizing.py tests/ipc/test_host.py tests/ipc/test_local.py tests/ipc/test_runtime.py
       tests/sdk/test_ml_sdk.py tests/service/test_service.py tests/sdk/test_sdk_dist.py tests/tools/test_doctor.py
       tests/tools/test_deploy.py tests/service/test_metrics.py tests/standalone/test_serve.py
       tests/ipc/test_fuzz_ipc.py tests/ipc/test_trust.py tests/ipc/test_bounds.py tests/ipc/test_edges.py
       tests/ipc/test_admission.py tests/standalone/test_ggrouter.py tests/standalone/test_attach_trust.py
       tests/feedback/test_spool.py tests/feedback/test_config.py tests/feedback/test_gate.py
       tests/feedback/test_sampling.py tests/feedback/test_feeder.py tests/feedback/test_hardening.py
       tests/ipc/test_fast_path.py tests/ipc/test_fast_trust.py tests/ipc/test_fuzz_fast.py
       tests/sdk/test_fast_sdk.py)
find_python() {  # a python$1 that really runs (pyenv shims exist for versions not selected)
  local v="$1" p
  for p in "$(command -v "python$v" || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python"$v"; do
    [ -n "$p" ] && [ -x "$p" ] && "$p" -c 'import sys' >/dev/null 2>&1 && { echo "$p"; return; }
  done
  return 0
}
run_version() {  # $1: 3.7 or 3.8; returns non-zero when its tests fail
  local v="$1" py venv start log t
  py=$(find_python "$v")
  if [ -z "$py" ]; then
    echo "Python $v: not found (PATH or pyenv); skipped"
    [ "${REQUIRE_OLD_PYTHONS:-0}" = 1 ] && return 1
    return 0
  fi
  venv=".venv-py${v/./}"
  start=$SECONDS
  if [ -x "$venv/bin/python" ]; then
    echo "Python $v: checking $venv's test dependencies (seconds), then its tests (~3 min)..."
  else
    echo "Python $v: creating $venv and installing its test dependencies (~1 min, first run only), then its tests (~3 min)..."
    "$py" -m venv "$venv"
  fi
  local deps=(pytest pytest-timeout hypothesis pillow wheel "numpy>=1.16" "opencv-python-headless>=4.2" "pyyaml>=5.1" "dlr==1.6.0" "paho-mqtt>=1.6")
  [ "$v" = 3.7 ] || deps+=("onnxruntime>=1.18,<1.33" onnx)
  log=$(mktemp)
  if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "${deps[@]}" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; echo "error: installing the test dependencies for Python $v failed" >&2; return 1
  fi
  rm -f "$log"
  local existing=() tests=("${TESTS[@]}")
  # These build ONNX models with the onnx package, which (like ONNX Runtime) has no 3.7 wheel here.
  [ "$v" = 3.7 ] || tests+=(tests/model/test_formats.py tests/model/test_engine.py)
  for t in "${tests[@]}"; do [ -e "$t" ] && existing+=("$t"); done
  echo "Python $v ($py): ${#existing[@]} test files"
  # The package is used from the checkout (PYTHONPATH), as the tests' service processes do.
  local rc=0
  PYTHONPATH="$PWD:$PWD/ml_sdk" "$venv/bin/python" -m pytest -q -p no:cacheprovider -p no:randomly \
    "${existing[@]}" || rc=1
  echo "Python $v: done ($((SECONDS - start)) s)"
  return $rc
}

status=0
if [ ${#versions[@]} -eq 1 ]; then
  run_version "${versions[0]}" || status=1
  exit $status
fi
# Several versions run side by side: each test process waits on the service processes it starts
# most of the time (about half a core each), so two of them take little longer than one. Each
# version's output is kept apart and shown whole when it ends.
echo "Python ${versions[*]}: run side by side; each one's output follows when it ends"
logs=() pids=()
for v in "${versions[@]}"; do
  logs+=("$(mktemp)")
  run_version "$v" >"${logs[-1]}" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || status=1
  cat "${logs[$i]}"; rm -f "${logs[$i]}"
done
exit $status
