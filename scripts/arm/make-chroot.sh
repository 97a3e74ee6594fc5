#!/usr/bin/env bash
# Build a Debian 12 chroot for an ARM architecture that runs under qemu-user emulation on an x86_64
# host, for testing this project on ARM without ARM hardware.
#   scripts/arm/make-chroot.sh arm64|armhf DIR
# Needs root, debootstrap and qemu-user-static: Debian 12's (with binfmt-support) or the qemu 10 of
# bookworm-backports (its binfmt.d files are registered here when update-binfmts does not know
# them). The mirror is the one this machine's apt uses (scripts/lib/apt-mirror.sh; DEBIAN_MIRROR
# overrides). Idempotent: a finished chroot (marked by DIR/.chroot-ready) is left alone. Takes
# ~12 minutes per architecture on a 2-core x86_64 host.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../lib/apt-mirror.sh"
. "$here/../lib/binfmt.sh"
arch="${1:-}" dir="${2:-}"
case "$arch" in
  arm64) qemu=aarch64 ;;
  armhf) qemu=arm ;;
  *) echo "usage: $0 arm64|armhf DIR" >&2; exit 2 ;;
esac
[ -n "$dir" ] || { echo "usage: $0 arm64|armhf DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || {
  echo "error: debootstrap is missing (apt-get install debootstrap qemu-user-static)" >&2; exit 1; }
mirror=$(apt_mirror bookworm) || {
  echo "error: no Debian mirror in this machine's apt sources (/etc/apt/sources.list.d/*.sources," \
       "/etc/apt/sources.list); set DEBIAN_MIRROR=http://<your mirror>/debian" >&2; exit 1; }
# binfmt_misc lets the kernel hand ARM executables to qemu; containers often have it unmounted.
misc=/proc/sys/fs/binfmt_misc
if [ ! -e "$misc/status" ]; then
  mount -t binfmt_misc binfmt_misc "$misc"
fi
# Re-register (with the F flag the kernel keeps the interpreter it opened at registration, so an
# upgraded qemu is used only after this), through whatever registered it: update-binfmts, or the
# binfmt.d file written to $misc/register as systemd-binfmt does. An entry made otherwise is kept.
display=""
if command -v update-binfmts >/dev/null; then display=$(update-binfmts --display "qemu-$qemu" 2>/dev/null || true); fi
binfmt_apply "$misc" <<< "$(binfmt_plan "qemu-$qemu" "$misc" "$display")" || {
  echo "error: nothing registers qemu-$qemu (apt-get install qemu-user-static binfmt-support, or" \
       "qemu-user-static from bookworm-backports)" >&2; exit 1; }
[ -e "$misc/qemu-$qemu" ] || {
  echo "error: the kernel has no binfmt_misc entry for qemu-$qemu; cannot run $arch binaries" >&2; exit 1; }
# ONNX Runtime >= 1.28 crashes at import under Debian 12's qemu 7.2 and runs under qemu 10
# (apt-get install -t bookworm-backports qemu-user-static). Asked of the interpreter the kernel runs.
interpreter=$(sed -n 's/^interpreter //p' "$misc/qemu-$qemu")
major=$("$interpreter" --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' || true)
if [ "$arch" = arm64 ] && [ "${major:-0}" -lt 8 ]; then
  echo "warning: qemu ${major:-?} ($interpreter): ONNX Runtime >= 1.28 will crash under it; install qemu-user-static from bookworm-backports" >&2
fi
if [ -f "$dir/.chroot-ready" ]; then
  echo "$dir: $arch chroot already built"; exit 0
fi
rm -rf "$dir"
mkdir -p "$dir"
start=$SECONDS
debootstrap --arch="$arch" --variant=minbase \
  --include=ca-certificates,python3,python3-venv,python3-pip,sudo \
  bookworm "$dir" "$mirror"
# minbase has no /etc/hosts, so "localhost" would not resolve and the IPC host/clients would fail.
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > "$dir/etc/hosts"
cp /etc/resolv.conf "$dir/etc/resolv.conf"
touch "$dir/.chroot-ready"
echo "$dir: $arch chroot built in $((SECONDS - start)) s"
