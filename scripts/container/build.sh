#!/usr/bin/env bash
# Build the OCI image localhost/ml-object-detection-connector:<version> without pulling anything
# from a container registry:
#   1. the base root file system from Debian's packages (debootstrap, minbase + python3), trimmed
#      (no docs, man pages, locales, apt lists or caches), imported with `podman import`;
#   2. the project's wheel (pip wheel) and its dependencies' wheels for the image's Python and
#      platform (pip download, on this host: the package index is reached from here only);
#   3. `podman build` (scripts/container/Containerfile, docker format for HEALTHCHECK, no network):
#      installs the wheels with --no-index into /opt/gg-ml and sets up the non-root user.
# Needs root, podman, runc and debootstrap (apt-get install podman runc debootstrap). The Debian
# mirror is the one this machine's apt sources name (override: --mirror URL).
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() {
  cat <<'EOF'
usage: scripts/container/build.sh [--extras LIST] [--suite NAME] [--mirror URL] [--tag NAME:TAG]
                                  [--work DIR] [--keep-work]
  --extras LIST  the package's extras to install (default: onnx; e.g. onnx,feedback)
  --suite NAME   Debian suite of the base (default: this machine's VERSION_CODENAME, else bookworm)
  --mirror URL   Debian mirror (default: the first URIs:/deb line of this machine's apt sources)
  --tag NAME:TAG image name (default: localhost/ml-object-detection-connector:<version>)
  --work DIR     scratch directory (default: build/container; emptied first)
  --keep-work    keep the scratch directory (the root file system and the wheels)
Environment: PODMAN_OPTS (global podman options, default "--runtime runc" where runc exists),
PYTHON (the Python whose pip downloads the wheels, default python3).
EOF
}

die() { echo "error: $*" >&2; exit 1; }

extras=onnx suite="" mirror="" tag="" work=build/container keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --extras) [ $# -ge 2 ] || die "--extras needs a value"; extras="$2"; shift 2 ;;
    --suite) [ $# -ge 2 ] || die "--suite needs a value"; suite="$2"; shift 2 ;;
    --mirror) [ $# -ge 2 ] || die "--mirror needs a value"; mirror="$2"; shift 2 ;;
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; tag="$2"; shift 2 ;;
    --work) [ $# -ge 2 ] || die "--work needs a value"; work="$2"; shift 2 ;;
    --keep-work) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done
[[ "$extras" =~ ^[a-z0-9,]+$ ]] || die "--extras must be a comma-separated list of extras, got '$extras'"

version=$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' connector/__init__.py)
[ -n "$version" ] || die "cannot read __version__ from connector/__init__.py"
tag="${tag:-localhost/ml-object-detection-connector:$version}"
base_tag="localhost/ml-object-detection-connector-base:$version"
python="${PYTHON:-python3}"

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and podman import need it)"
for tool in podman debootstrap; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install podman runc debootstrap)"
done
if [ -z "${PODMAN_OPTS+set}" ]; then
  # crun refuses hosts with hybrid cgroups; runc runs everywhere podman does.
  PODMAN_OPTS=""
  command -v runc >/dev/null && PODMAN_OPTS="--runtime runc"
fi
read -r -a podman_opts <<<"$PODMAN_OPTS"
pod() { podman "${podman_opts[@]}" "$@"; }

machine=$(uname -m)
case "$machine" in
  x86_64|aarch64) ;;
  *) die "unsupported platform $machine: PyPI has no $machine wheels of OpenCV/ONNX Runtime (use scripts/install/install-armv7.sh on ARMv7)" ;;
esac

# The mirror of this machine's apt sources: deb822 first, then the one-line format.
apt_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'tolower($1) == "uris:" {print $2; exit}' "$f"
    return
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' "$f"
    return
  done
}
if [ -z "$suite" ]; then
  suite=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
  suite="${suite:-bookworm}"
fi
mirror="${mirror:-$(apt_mirror | head -n 1)}"
[ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources.list{,.d}; pass --mirror URL"

started=$(date +%s)
step() { echo "[$(( $(date +%s) - started ))s] $*"; }

rm -rf "$work"
mkdir -p "$work/context/wheels"
rootfs="$work/rootfs"
cleanup() { [ "$keep" -eq 1 ] || rm -rf "$work"; }
trap cleanup EXIT

step "debootstrap $suite from $mirror"
debootstrap --variant=minbase --include=python3,ca-certificates "$suite" "$rootfs" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

step "trimming the base (docs, man pages, locales, apt lists and caches)"
# Copyright files stay (Debian's licences travel with the binaries).
find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/lintian \
       "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/debconf/*-old \
       "$rootfs"/var/log/* "$rootfs"/usr/lib/python3*/pydoc_data "$rootfs"/usr/lib/python3*/test
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
find "$rootfs/usr/lib" -name __pycache__ -type d -prune -exec rm -rf {} +
# What the wheels must fit: the image's Python and glibc.
py_version=$(readlink "$rootfs/usr/bin/python3" | sed -n 's/^python\([0-9]*\.[0-9]*\)$/\1/p')
glibc_minor=$(awk '/^Package: libc6$/ {p = 1} p && /^Version:/ {split($2, v, "[.-]"); print v[2]; exit}' \
  "$rootfs/var/lib/dpkg/status")
[ -n "$py_version" ] && [ -n "$glibc_minor" ] || die "cannot tell the base's Python or glibc version"
step "base: Python $py_version, glibc 2.$glibc_minor, $(du -sm "$rootfs" | cut -f1) MB"
pod rmi --force "$base_tag" >/dev/null 2>&1 || true
tar -C "$rootfs" --numeric-owner -c . | pod import --quiet - "$base_tag" >/dev/null
rm -rf "$rootfs"

step "wheels for cp${py_version/./} $machine (pip download on this host)"
"$python" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$work/context/wheels" . \
  >"$work/pip.log" 2>&1 || { cat "$work/pip.log" >&2; die "pip wheel of this project failed"; }
platforms=()
for minor in $(seq 17 "$glibc_minor"); do platforms+=(--platform "manylinux_2_${minor}_${machine}"); done
platforms+=(--platform "manylinux2014_${machine}")
"$python" -m pip download --quiet --disable-pip-version-check -d "$work/context/wheels" \
  --find-links "$work/context/wheels" --only-binary=:all: --implementation cp \
  --python-version "$py_version" "${platforms[@]}" \
  "ml-object-detection-connector[$extras]==$version" pip >"$work/pip.log" 2>&1 \
  || { cat "$work/pip.log" >&2; die "pip download of the wheels failed"; }
cp examples/params.yaml "$work/context/params.yaml"

step "podman build $tag"
pod build --quiet --format docker --network none --pull=never \
  --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
  --build-arg "BASE=$base_tag" --build-arg "VERSION=$version" --build-arg "EXTRAS=$extras" \
  -f scripts/container/Containerfile -t "$tag" "$work/context" >/dev/null
size=$(pod image inspect --format '{{.Size}}' "$tag")
step "built $tag: $(( size / 1000000 )) MB"
echo "run it: podman run --rm --network host $tag"
