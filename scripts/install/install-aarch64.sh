#!/usr/bin/env bash
# Install the connector on 64-bit ARM: Raspberry Pi OS 64-bit / Debian arm64 / Ubuntu arm64, and
# NVIDIA Jetson (Ubuntu of JetPack).
#   sudo scripts/install/install-aarch64.sh [--libdlr FILE] [--prefix DIR] [--model-dir DIR]
#                                           [--systemd --config FILE]
# NumPy, OpenCV (headless), PyYAML and ONNX Runtime come as PyPI aarch64 wheels; DLR is pure Python
# on aarch64 and needs a libdlr.so: from the Neo-compiled model directory, or --libdlr
# (scripts/arm/build-libdlr.sh aarch64 cross-builds one for glibc >= 2.34).
#
# Jetson: the JetPack release fixes Ubuntu, Python and CUDA:
#   JetPack 6.x  Ubuntu 22.04, Python 3.10, CUDA 12: GPU ONNX Runtime wheels from NVIDIA's index
#                (https://pypi.jetson-ai-lab.dev, jp6/cu126); PyPI's aarch64 onnxruntime-gpu is built
#                for server ARM with CUDA 13 and does not fit a Jetson.
#   JetPack 5.x  Ubuntu 20.04, Python 3.8, CUDA 11.4: onnxruntime-gpu wheels from the Jetson Zoo
#                (https://elinux.org/Jetson_Zoo#ONNX_Runtime).
#   JetPack 4.x  (the last for TX1/TX2/Nano: 4.6, CUDA 10.2) Ubuntu 18.04, Python 3.6: this project
#                needs Python >= 3.7, so install python3.8 from Ubuntu (apt-get install python3.8
#                python3.8-venv) and pass PYTHON=python3.8; the Jetson Zoo's GPU ONNX Runtime wheels
#                are for Python 3.6 only, so on TX2 the GPU path is DLR with a Neo model compiled
#                for jetson_tx2 (its libdlr.so ships in the model directory). A libdlr.so built on
#                Debian 12 needs glibc 2.34 and does not load on JetPack 4/5.
# Set ORT_GPU_WHEEL=<file or URL of an onnxruntime-gpu wheel for this JetPack> to install the GPU
# runtime; without it a Jetson gets the CPU ONNX Runtime from PyPI. Idempotent; ends with `doctor`.
source "$(dirname "$0")/common.sh"
parse_args "$@"
require_machine aarch64
id_=$(os_field ID)
case "$id_" in
  debian|raspbian|ubuntu) ;;
  *) unsupported "OS '${id_:-unknown}' (from $OS_RELEASE); aarch64 installs on Raspberry Pi OS, Debian, Ubuntu or Jetson Linux" ;;
esac
py="${PYTHON:-python3}"
jetson=""
if [ -r /etc/nv_tegra_release ]; then
  jetson=$(head -1 /etc/nv_tegra_release)
  echo "   Jetson: $jetson"
fi
step "system packages (apt)" apt_install python3 python3-venv python3-pip ca-certificates
step "virtual environment $PREFIX" make_venv "$py"
pyver=$("$PREFIX/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
extras="dlr"
[ "$pyver" = 3.7 ] || extras="$extras,onnx"
extras=$(with_feedback "$extras")
step "pip: connector [$extras] from $REPO" pip_install "$REPO[$extras]"
if [ -n "${ORT_GPU_WHEEL:-}" ]; then
  step "pip: GPU ONNX Runtime $ORT_GPU_WHEEL" pip_install --force-reinstall --no-deps "$ORT_GPU_WHEEL"
elif [ -n "$jetson" ]; then
  echo "   note: CPU ONNX Runtime only; set ORT_GPU_WHEEL for the GPU (see the top of this script)"
fi
step "DLR: phone-home off" dlr_no_phone_home
step "DLR: libdlr.so" place_libdlr
step "systemd unit" install_systemd_unit
run_doctor
