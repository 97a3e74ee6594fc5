#!/usr/bin/env bash
# Install the connector on 32-bit ARM (armv7l): Raspberry Pi OS 32-bit / Debian armhf 11 or 12.
#   sudo scripts/install/install-armv7.sh --libdlr FILE [--prefix DIR] [--model-dir DIR]
#                                         [--systemd --config FILE]
# PyPI has no armv7l wheels of NumPy, OpenCV or PyYAML, and ONNX Runtime has no armhf build at all,
# so NumPy/OpenCV/PyYAML come from Debian (python3-numpy, python3-opencv, python3-yaml; the venv sees
# them through --system-site-packages) and ARMv7 is a DLR platform, as the original was: models
# compiled by SageMaker Neo for armv7 (they usually ship libdlr.so), or a libdlr.so you give with
# --libdlr (scripts/arm/build-libdlr.sh armv7 cross-builds one). Idempotent; ends with `doctor`.
source "$(dirname "$0")/common.sh"
parse_args "$@"
require_machine armv7l armv8l
id_=$(os_field ID)
case "$id_" in
  raspbian|debian) ;;
  *) unsupported "OS '${id_:-unknown}' (from $OS_RELEASE); ARMv7 installs on Raspberry Pi OS 32-bit or Debian armhf" ;;
esac
swap_advice() {
  local mem_kb swap_kb
  mem_kb=$(awk '/^MemTotal:/{print $2}' /proc/meminfo)
  swap_kb=$(awk '/^SwapTotal:/{print $2}' /proc/meminfo)
  if [ "$((mem_kb + swap_kb))" -lt 2000000 ]; then
    echo "   note: $((mem_kb / 1024)) MiB memory + $((swap_kb / 1024)) MiB swap. Installing the ML packages can"
    echo "   exhaust memory on a Raspberry Pi; if it hangs, raise CONF_SWAPSIZE in /etc/dphys-swapfile"
    echo "   (e.g. 1024), run '/etc/init.d/dphys-swapfile restart', then re-run this script."
  fi
}
step "memory check" swap_advice
# python3-opencv pulls ~300 packages (~10 minutes on a Pi); it is still far quicker than building
# OpenCV from source, which is what pip would try.
step "system packages (apt)" apt_install python3 python3-venv python3-pip python3-numpy python3-opencv python3-yaml ca-certificates
step "virtual environment $PREFIX (with Debian's NumPy/OpenCV)" make_venv python3 --system-site-packages
# pip does not count Debian's OpenCV as opencv-python-headless, so that wheel is only an extra.
extras=$(with_feedback dlr)
step "pip: connector [$extras] from $REPO" pip_install "$REPO[$extras]"
step "DLR: phone-home off" dlr_no_phone_home
step "DLR: libdlr.so" place_libdlr
step "systemd unit" install_systemd_unit
run_doctor
