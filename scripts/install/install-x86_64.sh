#!/usr/bin/env bash
# Install the connector on x86_64: Debian 11/12, Ubuntu 20.04+ or Amazon Linux 2/2023.
#   sudo scripts/install/install-x86_64.sh [--prefix DIR] [--libdlr FILE] [--model-dir DIR]
#                                          [--systemd --config FILE]
# Runtimes: ONNX Runtime (PyPI wheel; Python >= 3.8) and DLR (dlr==1.6.0 ships libdlr.so for
# x86_64). NumPy and OpenCV come as PyPI wheels. Idempotent; ends by running `doctor`.
source "$(dirname "$0")/common.sh"
parse_args "$@"
require_machine x86_64
id_=$(os_field ID) ver=$(os_field VERSION_ID)
case "$id_" in
  debian|ubuntu) family=deb ;;
  amzn) family=rpm ;;
  *) unsupported "OS '${id_:-unknown}' (from $OS_RELEASE); x86_64 installs on Debian, Ubuntu or Amazon Linux" ;;
esac
py=python3
if [ "$family" = deb ]; then
  step "system packages (apt)" apt_install python3 python3-venv python3-pip ca-certificates
else
  # Amazon Linux 2 ships Python 3.7 (DLR only: ONNX Runtime has no 3.7 wheel); 2023 ships 3.9.
  step "system packages (yum/dnf)" rpm_install python3 python3-pip
fi
step "virtual environment $PREFIX" make_venv "$py"
pyver=$("$PREFIX/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
extras="dlr"
if [ "$pyver" != 3.7 ]; then extras="$extras,onnx"; else
  echo "   Python 3.7: ONNX Runtime has no wheel for it; DLR is the runtime (Neo-compiled models)"; fi
# Amazon Linux 2's pip 9 cannot install manylinux2014 wheels.
step "pip: pip itself" pip_install --upgrade pip
extras=$(with_feedback "$extras")
step "pip: connector [$extras] from $REPO" pip_install "$REPO[$extras]"
step "DLR: phone-home off" dlr_no_phone_home
step "DLR: libdlr.so" place_libdlr
step "systemd unit" install_systemd_unit
run_doctor
