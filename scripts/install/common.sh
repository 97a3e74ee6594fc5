# Shared by scripts/install/install-*.sh (sourced, not run). Each installer:
#   - checks the OS and architecture first and exits 3 with a clear message when unsupported;
#   - runs named steps; every step is idempotent (a re-run skips what is already done);
#   - on failure says which step stopped it, what is already installed, and how to go on or undo;
#   - ends by running `python -m connector doctor`, whose exit status it returns.
# Options (all installers): --prefix DIR (virtual environment, default /opt/gg-ml-connector),
# --systemd (install and enable the standalone service unit; needs --config), --config FILE
# (connector parameters for the unit), --libdlr FILE (a libdlr.so for this architecture),
# --model-dir DIR (check this model directory with doctor), --feedback (also boto3 and paho-mqtt for
# the ML feedback service), --yes (no questions; CI).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PREFIX=/opt/gg-ml-connector
SYSTEMD=0 CONFIG="" LIBDLR="" MODEL_DIR="" FEEDBACK=0
DONE_STEPS=() CURRENT_STEP=""
# Overridable for tests: where os-release is read, what machine this is, and where the systemd
# unit and its parameters go.
OS_RELEASE="${GGML_OS_RELEASE:-/etc/os-release}"
MACHINE="${GGML_MACHINE:-$(uname -m)}"
ETC_DIR="${GGML_ETC_DIR:-/etc/gg-ml-connector}"
UNIT_DIR="${GGML_UNIT_DIR:-/etc/systemd/system}"

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
unsupported() { printf 'error: unsupported platform: %s\n' "$*" >&2; exit 3; }

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
      --systemd) SYSTEMD=1; shift ;;
      --config) CONFIG="${2:?--config needs a file}"; shift 2 ;;
      --libdlr) LIBDLR="${2:?--libdlr needs a file}"; shift 2 ;;
      --model-dir) MODEL_DIR="${2:?--model-dir needs a directory}"; shift 2 ;;
      --feedback) FEEDBACK=1; shift ;;
      --yes|-y) shift ;;
      -h|--help) sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//'
                 sed -n '/^# Options/,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
  done
  if [ "$SYSTEMD" = 1 ] && [ -z "$CONFIG" ]; then die "--systemd needs --config FILE (the connector parameters)"; fi
  if [ -n "$CONFIG" ] && [ ! -r "$CONFIG" ]; then die "--config $CONFIG: no such readable file"; fi
  if [ -n "$LIBDLR" ] && [ ! -r "$LIBDLR" ]; then die "--libdlr $LIBDLR: no such readable file"; fi
  return 0
}

# os_field ID -> value of ID= in os-release ("" when absent).
os_field() {
  [ -r "$OS_RELEASE" ] || { echo ""; return; }
  sed -n "s/^$1=//p" "$OS_RELEASE" | head -1 | tr -d '"'
}

require_machine() {  # allowed uname -m values...
  local m
  for m in "$@"; do [ "$MACHINE" = "$m" ] && return 0; done
  unsupported "this script installs on $* but this machine is $MACHINE; use scripts/install/install-<arch>.sh for yours"
}

# Runs "$@" as step NAME; the EXIT trap reports the step that failed and what was done before it.
step() {
  local name="$1"; shift
  CURRENT_STEP="$name"
  say "$name"
  "$@"
  DONE_STEPS+=("$name")
  CURRENT_STEP=""
}

_on_exit() {
  local rc=$?
  if [ $rc -ne 0 ] && [ -n "$CURRENT_STEP" ]; then
    {
      echo "error: the installation stopped at step '$CURRENT_STEP' (exit $rc); the system is partly installed."
      if [ ${#DONE_STEPS[@]} -gt 0 ]; then printf '  done before it: %s\n' "${DONE_STEPS[@]}"; fi
      echo "  Fix the cause shown above and run this script again: finished steps are skipped."
      echo "  To undo instead: rm -rf $PREFIX (and the system packages it installed, listed above)."
    } >&2
  fi
}
trap _on_exit EXIT

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Writers never follow a symbolic link someone planted (cp, tee and > write through one):
# make_dir DIR MODE refuses a link at DIR; write_file DEST MODE < CONTENT writes a fresh file of
# an unpredictable name beside DEST (mktemp: O_EXCL, 0600) and renames it over DEST, which
# replaces a link there instead of writing through it.
make_dir() {
  if [ -L "$1" ]; then die "$1 is a symbolic link; remove it (the installer writes only into real directories)"; fi
  as_root install -d -m "$2" "$1"
}

write_file() {
  local dest="$1" mode="$2" tmp
  tmp=$(as_root mktemp "$(dirname "$dest")/.$(basename "$dest").XXXXXX") || die "cannot create a file beside $dest"
  if as_root tee "$tmp" >/dev/null && as_root chmod "$mode" "$tmp" && as_root mv -fT "$tmp" "$dest"; then
    return 0
  fi
  as_root rm -f "$tmp"
  die "cannot write $dest"
}

apt_install() {  # packages...: installs only the missing ones, so a re-run does not touch apt.
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  if [ ${#missing[@]} -eq 0 ]; then echo "   already installed: $*"; return 0; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

rpm_install() {
  local missing=() p
  for p in "$@"; do rpm -q "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -eq 0 ]; then echo "   already installed: $*"; return 0; fi
  if command -v dnf >/dev/null; then as_root dnf install -y -q "${missing[@]}"; else as_root yum install -y -q "${missing[@]}"; fi
}

# make_venv PYTHON [--system-site-packages]: the prefix's virtual environment (kept when it exists).
make_venv() {
  local py="$1"; shift
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 7))' ||
    die "$py is Python $("$py" -c 'import platform; print(platform.python_version())'); the connector needs 3.7 or newer"
  if [ -x "$PREFIX/bin/python" ]; then echo "   $PREFIX exists"; return 0; fi
  as_root mkdir -p "$(dirname "$PREFIX")"
  as_root "$py" -m venv "$@" "$PREFIX"
}

# with_feedback EXTRAS -> EXTRAS plus the feedback service's when --feedback was given.
with_feedback() { if [ "$FEEDBACK" = 1 ]; then echo "$1,feedback"; else echo "$1"; fi; }

pip_install() { as_root "$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

# The dlr package finds libdlr.so at <sys.prefix>/dlr/libdlr.so (where the x86_64 dlr==1.6.0 wheel
# puts it), in its own package directory, or in the model directory. A Greengrass Lambda built with
# `--deps device` runs another interpreter (another sys.prefix) over this site-packages, so the
# library is linked into the package directory as well.
place_libdlr() {
  local target="$PREFIX/dlr/libdlr.so" pkg
  if [ -n "$LIBDLR" ]; then
    make_dir "$PREFIX/dlr" 0755
    write_file "$target" 0644 < "$LIBDLR"
    echo "   $target <- $LIBDLR"
  elif [ -e "$target" ]; then
    echo "   $target present"
  else
    echo "   no libdlr.so given (--libdlr): DLR models load only when their directory ships libdlr.so"
    echo "   (SageMaker Neo artefacts do); build one with scripts/arm/build-libdlr.sh"
    return 0
  fi
  pkg=$("$PREFIX/bin/python" -c 'from connector.model.backends.dlr_runtime import find_dlr_package as f; print(f() or "")')
  # -n: a link to a directory planted there is replaced, not followed into
  if [ -n "$pkg" ]; then as_root ln -sfn "$target" "$pkg/libdlr.so"; fi
}

# DLR phones home unless told not to; the edge must not make surprise connections (SPEC section 9).
dlr_no_phone_home() {
  as_root "$PREFIX/bin/python" -c 'from connector.model.backends.dlr_runtime import disable_phone_home; print("   dlr phone-home off:", disable_phone_home() or "no dlr installed")'
}

install_systemd_unit() {
  if [ "$SYSTEMD" != 1 ]; then echo "   skipped (pass --systemd --config FILE to install the service unit)"; return 0; fi
  command -v systemctl >/dev/null || die "--systemd: this system has no systemctl"
  make_dir "$ETC_DIR" 0755
  write_file "$ETC_DIR/params.yaml" 0644 < "$CONFIG"
  local memory_max
  memory_max=$("$PREFIX/bin/python" -m connector.tools.deploy memory-max --config "$CONFIG")
  sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@MEMORY_MAX@|$memory_max|g" "$REPO/scripts/install/gg-ml-connector.service" |
    write_file "$UNIT_DIR/gg-ml-connector.service" 0644
  id gg-ml-connector >/dev/null 2>&1 || as_root useradd --system --no-create-home --shell /usr/sbin/nologin gg-ml-connector
  as_root systemctl daemon-reload
  as_root systemctl enable --now gg-ml-connector.service
}

run_doctor() {
  local args=()
  [ -n "$MODEL_DIR" ] && args+=(--model-dir "$MODEL_DIR")
  [ -n "$CONFIG" ] && args+=(--config "$CONFIG")
  CURRENT_STEP=""
  say "doctor"
  set +e
  "$PREFIX/bin/python" -m connector doctor "${args[@]}"
  local rc=$?
  set -e
  if [ $rc -eq 0 ]; then say "installed in $PREFIX: the service can run"; else
    echo "error: installed in $PREFIX, but doctor says the service cannot run here yet (see above)" >&2; fi
  return $rc
}
