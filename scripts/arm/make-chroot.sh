#!/usr/bin/env bash
# Build a Debian 12 chroot for an ARM architecture that runs under qemu-user emulation on an x86_64
# host, for testing this project on ARM without ARM hardware.
#   scripts/arm/make-chroot.sh arm64|armhf DIR
# Needs root, debootstrap, qemu-user-static and binfmt-support (apt-get install them). Idempotent: a
# finished chroot (marked by DIR/.chroot-ready) is left alone. Takes ~12 minutes per architecture on a
# 2-core x86_64 host.
set -euo pipefail
arch="${1:-}" dir="${2:-}"
case "$arch" in
  arm64) qemu=aarch64 ;;
  armhf) qemu=arm ;;
  *) echo "usage: $0 arm64|armhf DIR" >&2; exit 2 ;;
esac
[ -n "$dir" ] || { echo "usage: $0 arm64|armhf DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root" >&2; exit 1; }
for tool in debootstrap "qemu-$qemu-static" update-binfmts; do
  command -v "$tool" >/dev/null || {
    echo "error: $tool is missing (apt-get install debootstrap qemu-user-static binfmt-support)" >&2; exit 1; }
done
# binfmt_misc lets the kernel hand ARM executables to qemu; containers often have it unmounted.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
# Re-register: with the F flag the kernel keeps the interpreter it opened at registration, so an
# upgraded qemu (e.g. from bookworm-backports) is used only after this.
update-binfmts --disable "qemu-$qemu" >/dev/null 2>&1 || true
update-binfmts --enable "qemu-$qemu" >/dev/null 2>&1 || true
# ONNX Runtime >= 1.28 crashes at import under Debian 12's qemu 7.2 and runs under qemu 10
# (apt-get install -t bookworm-backports qemu-user-static).
major=$("qemu-$qemu-static" --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
if [ "$arch" = arm64 ] && [ "${major:-0}" -lt 8 ]; then
  echo "warning: qemu $major: ONNX Runtime >= 1.28 will crash under it; install qemu-user-static from bookworm-backports" >&2
fi
[ -e "/proc/sys/fs/binfmt_misc/qemu-$qemu" ] || {
  echo "error: the kernel has no binfmt_misc entry for qemu-$qemu; cannot run $arch binaries" >&2; exit 1; }
if [ -f "$dir/.chroot-ready" ]; then
  echo "$dir: $arch chroot already built"; exit 0
fi
rm -rf "$dir"
mkdir -p "$dir"
start=$SECONDS
debootstrap --arch="$arch" --variant=minbase \
  --include=ca-certificates,python3,python3-venv,python3-pip,sudo \
  bookworm "$dir" http://deb.debian.org/debian
# minbase has no /etc/hosts, so "localhost" would not resolve and the IPC host/clients would fail.
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > "$dir/etc/hosts"
cp /etc/resolv.conf "$dir/etc/resolv.conf"
touch "$dir/.chroot-ready"
echo "$dir: $arch chroot built in $((SECONDS - start)) s"
