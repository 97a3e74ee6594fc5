#!/usr/bin/env bash
# Cross-build libdlr.so of neo-ai-dlr v1.6.0 (the runtime that PyPI's dlr==1.6.0 wheel carries for
# x86_64 only) for an ARM Linux target, with Debian's cross compilers.
#   scripts/arm/build-libdlr.sh aarch64|armv7 OUT_DIR
# Writes OUT_DIR/libdlr.so. Needs: git, cmake, make and g++-aarch64-linux-gnu or
# g++-arm-linux-gnueabihf. 7-22 minutes on 2 cores (425 s aarch64, 1312 s armv7 on a busy host).
# Sources: DLR_SRC=<a checkout of v1.6.0 with its submodules>, or else a clone from GitHub; set
# GIT_MIRRORS=<dir> to clone from local mirrors named <owner>+<repo>/repo instead (no network).
# The result links against the build host's glibc: one built on Debian 12 needs glibc >= 2.34, so it
# does not load on JetPack 4/5 (Ubuntu 18.04/20.04); build in a sysroot of that release for those.
set -euo pipefail
target="${1:-}" out="${2:-}"
case "$target" in
  aarch64) triple=aarch64-linux-gnu; proc=aarch64; flags="" ;;
  armv7) triple=arm-linux-gnueabihf; proc=armv7l; flags="-march=armv7-a -mfpu=neon-vfpv4 -mfloat-abi=hard" ;;
  *) echo "usage: $0 aarch64|armv7 OUT_DIR" >&2; exit 2 ;;
esac
[ -n "$out" ] || { echo "usage: $0 aarch64|armv7 OUT_DIR" >&2; exit 2; }
for tool in git cmake make "$triple-g++"; do
  command -v "$tool" >/dev/null || {
    echo "error: $tool is missing (apt-get install git cmake make g++-$triple)" >&2; exit 1; }
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/libdlr-$target.XXXXXX")"
trap 'rm -rf "$work"' EXIT
src="${DLR_SRC:-}"
# Only the submodules libdlr.so is built from (protobuf, vta-hw, rang are not needed).
# <path in parent>:<owner/repo>:<parent path>
SUBMODULES="3rdparty/tvm:neo-ai/tvm:. 3rdparty/treelite:neo-ai/treelite:. 3rdparty/libnpy:llohse/libnpy:.
  3rdparty/dmlc-core:dmlc/dmlc-core:3rdparty/tvm 3rdparty/dlpack:dmlc/dlpack:3rdparty/tvm
  dmlc-core:dmlc/dmlc-core:3rdparty/treelite 3rdparty/fmt:fmtlib/fmt:3rdparty/treelite"
if [ -z "$src" ] && [ -n "${GIT_MIRRORS:-}" ]; then
  # Local mirrors may lack big test blobs, so export each pinned tree without its tests.
  src="$work/neo-ai-dlr"
  export_tree() {  # owner/repo commit dest
    local gd="$GIT_MIRRORS/${1/\//+}/repo"
    [ -d "$gd/.git" ] && gd="$gd/.git"
    [ -d "$gd" ] || { echo "error: no mirror of $1 at $gd" >&2; exit 1; }
    mkdir -p "$3"
    git --git-dir="$gd" archive "$2" -- . ':(exclude)tests' ':(exclude)test' | tar -x -C "$3"
    echo "$1 $2"
  }
  export_tree neo-ai/neo-ai-dlr v1.6.0 "$src"
  for s in $SUBMODULES; do
    IFS=: read -r path repo parent <<<"$s"
    gd="$GIT_MIRRORS/${repo/\//+}/repo"
    pgd="$GIT_MIRRORS/neo-ai+neo-ai-dlr/repo"; prev=v1.6.0
    case "$parent" in
      3rdparty/tvm) pgd="$GIT_MIRRORS/neo-ai+tvm/repo/.git"; prev=$(git --git-dir="$GIT_MIRRORS/neo-ai+neo-ai-dlr/repo" rev-parse v1.6.0:3rdparty/tvm) ;;
      3rdparty/treelite) pgd="$GIT_MIRRORS/neo-ai+treelite/repo"; prev=$(git --git-dir="$GIT_MIRRORS/neo-ai+neo-ai-dlr/repo" rev-parse v1.6.0:3rdparty/treelite) ;;
    esac
    commit=$(git --git-dir="$pgd" rev-parse "$prev:$path")
    export_tree "$repo" "$commit" "$src/$parent/$path"
  done > "$work/sources.txt"
elif [ -z "$src" ]; then
  src="$work/neo-ai-dlr"
  git -c advice.detachedHead=false clone -q --branch v1.6.0 https://github.com/neo-ai/neo-ai-dlr.git "$src"
  git -C "$src" submodule -q update --init 3rdparty/tvm 3rdparty/treelite 3rdparty/libnpy
  git -C "$src/3rdparty/tvm" submodule -q update --init 3rdparty/dmlc-core 3rdparty/dlpack
  git -C "$src/3rdparty/treelite" submodule -q update --init dmlc-core 3rdparty/fmt
fi
# v1.6.0 downloads googletest (and test data) at configure time; the library does not need them.
sed -i 's/^if(NOT(AAR_BUILD))$/if(DLR_BUILD_TESTS)/' "$src/CMakeLists.txt"
mkdir -p "$work/build"
start=$SECONDS
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR="$proc" \
  -DCMAKE_C_COMPILER="$triple-gcc" -DCMAKE_CXX_COMPILER="$triple-g++" \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" >"$work/cmake.log" 2>&1 \
  || { cat "$work/cmake.log" >&2; echo "error: cmake configure failed (log above)" >&2; exit 1; }
make -C "$work/build" -j"${JOBS:-2}" dlr >"$work/make.log" 2>&1 \
  || { tail -50 "$work/make.log" >&2; echo "error: building libdlr.so failed (log tail above)" >&2; exit 1; }
"$triple-strip" -o "$out/libdlr.so" "$work/build/lib/libdlr.so"
echo "$out/libdlr.so: built for $target in $((SECONDS - start)) s"
