#!/usr/bin/env bash
# Test this project on ARM under qemu-user emulation (not part of the default CI run: from nothing
# ~50 min for arm64 and ~75 min for armhf on a 2-core x86_64 host, 15-20 min each once the chroot,
# libdlr.so and the first install exist; timings per phase are printed and kept in RESULTS).
#   sudo scripts/arm/run-arm.sh arm64|armhf [CHROOT_DIR] [LIBDLR_SO]
# Phases: build the Debian 12 chroot (scripts/arm/make-chroot.sh), copy this working tree to
# /opt/src there, install with scripts/install/install-<arch>.sh (libdlr.so: LIBDLR_SO, else built
# with scripts/arm/build-libdlr.sh), run the demo through the service with DLR (the Neo demo compiled
# for the architecture, DEMO_DIR=<dir> to choose, else connector/demos/demo-ssd-neo-<arch>, the trained SSD demo) and,
# on arm64, ONNX Runtime; then the tests that make sense there (runtime, service, IPC, SDK, doctor).
# PHASES="install demo tests" (the default) chooses what runs after the chroot and the copy;
# TESTS="tests/x.py::test_y ..." runs those tests instead of the subset.
set -euo pipefail
arch="${1:-}"
case "$arch" in
  arm64) target=aarch64 installer=install-aarch64.sh ;;
  armhf) target=armv7 installer=install-armv7.sh ;;
  *) echo "usage: $0 arm64|armhf [CHROOT_DIR] [LIBDLR_SO]" >&2; exit 2 ;;
esac
repo="$(cd "$(dirname "$0")/../.." && pwd)"
root="${2:-/var/tmp/gg-ml-chroot-$arch}"
libdlr="${3:-}"
results="${RESULTS:-$repo/out/arm-$arch.txt}"
mkdir -p "$(dirname "$results")" "$(dirname "$root")"
# One run per chroot: two would share its mounts, its /tmp and its installed prefix.
exec 9>"$root.lock"
flock -n 9 || { echo "error: another run-arm.sh is using $root" >&2; exit 1; }
: > "$results"
phase_start=$SECONDS
record() {  # phase status
  local line
  line=$(printf '%-28s %-6s %5d s' "$1" "$2" "$((SECONDS - phase_start))")
  echo "$line" | tee -a "$results"
  phase_start=$SECONDS
}
mounted=()
cleanup() {
  local m i
  for ((i=${#mounted[@]}-1; i>=0; i--)); do m="${mounted[$i]}"; umount -l "$m" 2>/dev/null || true; done
}
trap cleanup EXIT
mount_in() {  # fstype-or-bind source target
  mkdir -p "$3"
  mountpoint -q "$3" && return 0
  if [ "$1" = bind ]; then mount --bind "$2" "$3"; else mount -t "$1" "$2" "$3"; fi
  mounted+=("$3")
}
in_root() {  # command...: run inside the chroot with a clean environment
  chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root TMPDIR=/tmp LANG=C.UTF-8 READY_WAIT_S="${READY_WAIT_S:-900}" SERVICE_TIMEOUT_S=600 \
    CONNECTOR_MODEL_LOAD_TIMEOUT_SECONDS=900 \
    GG_ML_TEST_WAIT_FACTOR="${GG_ML_TEST_WAIT_FACTOR:-20}" "$@"
}

"$repo/scripts/arm/make-chroot.sh" "$arch" "$root"
record "chroot ($arch)" ok

mount_in proc proc "$root/proc"
mount_in bind /sys "$root/sys"
mount_in bind /dev "$root/dev"
# 32-bit programs under qemu-user get EOVERFLOW from readdir() on ext4 (64-bit directory cookies);
# a tmpfs TMPDIR keeps pip's and pytest's temporary trees readable.
mount_in tmpfs tmpfs "$root/tmp"

# The chroot trusts the host's local certificate authorities (a TLS-inspecting proxy in front of
# PyPI and Debian, for example).
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  in_root update-ca-certificates >/dev/null 2>&1 || true
fi

if [ -z "$libdlr" ]; then
  libdlr="$root/opt/libdlr-$target/libdlr.so"
  if [ ! -f "$libdlr" ]; then
    "$repo/scripts/arm/build-libdlr.sh" "$target" "$(dirname "$libdlr")"
  fi
  record "libdlr.so (cross-built)" ok
fi
install -D -m 0644 "$libdlr" "$root/opt/libdlr.so"

rm -rf "$root/opt/src" && mkdir -p "$root/opt/src"
tar -C "$repo" --exclude='./.venv*' --exclude=./.git --exclude=./out --exclude=./.tools -cf - . | tar -C "$root/opt/src" -xf -
demo="${DEMO_DIR:-$repo/connector/demos/demo-ssd-neo-$target}"
# On the tmpfs: 32-bit DLR cannot list a model directory on ext4 under qemu (EOVERFLOW above).
rm -rf "$root/tmp/demo-dlr" && cp -r "$demo" "$root/tmp/demo-dlr"

phases=" ${PHASES:-install demo tests} "
want() { case "$phases" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
# A run stopped during apt leaves dpkg half-configured; finish that first.
in_root dpkg --configure -a >/dev/null 2>&1 || true
status=0
if want install; then
if in_root bash /opt/src/scripts/install/"$installer" --yes --libdlr /opt/libdlr.so --model-dir /tmp/demo-dlr; then
  record "install + doctor" ok
else
  record "install + doctor" FAIL; status=1
fi
# A second run must change nothing and still pass (idempotence).
if in_root bash /opt/src/scripts/install/"$installer" --yes --libdlr /opt/libdlr.so >/dev/null; then
  record "install again (idempotent)" ok
else
  record "install again (idempotent)" FAIL; status=1
fi
fi
py=/opt/gg-ml-connector/bin/python
if want demo; then
if in_root bash -c "cd /opt/src && scripts/serve-and-call.sh $py /tmp/demo-dlr out/demo-dlr 2"; then
  record "demo through service: DLR" ok
else
  record "demo through service: DLR" FAIL; status=1
fi
if [ "$arch" = arm64 ]; then
  if in_root bash -c "cd /opt/src && scripts/serve-and-call.sh $py /opt/src/connector/demos/demo-ssd out/demo-onnx 2"; then
    record "demo through service: ONNX" ok
  else
    record "demo through service: ONNX" FAIL; status=1
  fi
fi
fi
# The test subset: what runs on the device (no training, no x86-only artefacts, no benchmarks).
if want tests; then
# PyPI has no armv7l Pillow wheel (building it needs the JPEG headers and ages under emulation):
# on armhf it comes from Debian, as NumPy and OpenCV do (the venv sees the system packages).
if [ "$arch" = armhf ]; then debs="gcc libc6-dev python3-pil" pips="pytest pytest-timeout hypothesis"
else debs="gcc libc6-dev" pips="pytest pytest-timeout hypothesis pillow"; fi
if ! { in_root apt-get install -y -qq --no-install-recommends $debs >/dev/null &&
       in_root "$py" -m pip install -q $pips >/dev/null; }; then
  record "tests (installing pytest)" FAIL; echo "results: $results"; exit 1
fi
tests="${TESTS:-tests/test_params.py tests/model/test_imaging.py tests/service/test_bad_input.py tests/model/test_dlr_backend.py
       tests/model/test_dlr_phone_home.py tests/supervision/test_supervisor.py tests/ipc/test_host.py tests/ipc/test_local.py
       tests/ipc/test_runtime.py tests/sdk/test_ml_sdk.py tests/service/test_service.py tests/tools/test_doctor.py}"
if in_root bash -c "cd /opt/src && $py -m pytest -q -rfE -p no:randomly -p no:cacheprovider $(echo $tests)" | tee -a "$results" | tail -15; then
  record "tests" ok
else
  record "tests" FAIL; status=1
fi
fi
echo "results: $results"
exit $status
