# shellcheck shell=bash
# Register a qemu-user binfmt_misc entry whichever way this machine's qemu ships it:
# binfmt-support (`update-binfmts`, Debian 12's qemu 7.2) or systemd's binfmt.d files
# (/usr/lib/binfmt.d/qemu-*.conf, the qemu 10 of bookworm-backports and Debian 13), where nothing
# registers them in a container without systemd.
#
#   . scripts/lib/binfmt.sh
#   plan=$(binfmt_plan qemu-aarch64 /proc/sys/fs/binfmt_misc "$(update-binfmts --display qemu-aarch64 2>/dev/null)")
#   binfmt_apply /proc/sys/fs/binfmt_misc <<< "$plan"
#
# binfmt_plan NAME MISC_DIR DISPLAY [CONF_DIR...] prints one action a line, deciding from the
# kernel's entry (MISC_DIR/NAME), what `update-binfmts --display NAME` printed (DISPLAY) and the
# binfmt.d files (CONF_DIRs, default /etc/binfmt.d /run/binfmt.d /usr/lib/binfmt.d, the first
# holding NAME wins, as systemd-binfmt reads them):
#   update-binfmts --disable NAME | update-binfmts --enable NAME
#   unregister NAME                (echo -1 > MISC_DIR/NAME)
#   register :NAME:M:...           (the binfmt.d line, written to MISC_DIR/register)
#   keep NAME: WHY                 (an entry someone else made: left alone)
#   none NAME: WHY                 (nothing knows NAME: cannot register it)
# Re-registering an entry this way picks up an upgraded qemu: with the F flag the kernel keeps the
# interpreter it opened at registration. An entry is only ever removed to be registered again from
# the same source (its interpreter matches): never one that another source created.

_binfmt_kernel_interpreter() {  # MISC_DIR NAME: the interpreter of the kernel's entry, if any
  [ -f "$1/$2" ] || return 0
  sed -n 's/^interpreter //p' "$1/$2"
}

_binfmt_conf_line() {  # NAME CONF_DIR...: the binfmt.d line registering NAME
  local name="$1" dir f line
  shift
  for dir in "$@"; do
    for f in "$dir"/*.conf; do
      [ -f "$f" ] || continue
      while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in ''|'#'*|';'*) continue ;; esac
        # :name:type:offset:magic:mask:interpreter:flags, the first character being the separator
        if [ "$(printf '%s' "$line" | cut -d "${line:0:1}" -f 2)" = "$name" ]; then
          printf '%s\n' "$line"; return 0
        fi
      done < "$f"
    done
  done
}

binfmt_plan() {
  local name="$1" misc="$2" display="$3" kernel ub conf conf_interp
  shift 3
  [ $# -gt 0 ] || set -- /etc/binfmt.d /run/binfmt.d /usr/lib/binfmt.d
  kernel=$(_binfmt_kernel_interpreter "$misc" "$name")
  ub=""
  if printf '%s\n' "$display" | grep -Eq "^$name \((enabled|disabled)\):"; then
    ub=$(printf '%s\n' "$display" | sed -n 's/^ *interpreter = *//p' | head -n 1)
  fi
  if [ -n "$ub" ]; then
    if [ -n "$kernel" ] && [ "$kernel" != "$ub" ]; then
      echo "keep $name: the kernel's entry runs $kernel, not update-binfmts' $ub"; return 0
    fi
    [ -z "$kernel" ] || echo "update-binfmts --disable $name"
    echo "update-binfmts --enable $name"
    return 0
  fi
  conf=$(_binfmt_conf_line "$name" "$@")
  if [ -z "$conf" ]; then
    if [ -n "$kernel" ]; then echo "keep $name: registered (runs $kernel) by neither update-binfmts nor binfmt.d"
    else echo "none $name: update-binfmts does not know it and no binfmt.d file registers it"; fi
    return 0
  fi
  conf_interp=$(printf '%s' "$conf" | cut -d "${conf:0:1}" -f 7)
  if [ -n "$kernel" ] && [ "$kernel" != "$conf_interp" ]; then
    echo "keep $name: the kernel's entry runs $kernel, not the binfmt.d file's $conf_interp"; return 0
  fi
  [ -z "$kernel" ] || echo "unregister $name"
  echo "register $conf"
}

binfmt_apply() {  # MISC_DIR, the plan on stdin: carry it out; status 1 on `none` or a failed step
  # Each step checked here: callers use it in `... || error`, where bash ignores `set -e`.
  local misc="$1" action rest ok status=0
  while IFS= read -r action; do
    rest="${action#* }" ok=0
    case "$action" in
      "update-binfmts "*) update-binfmts ${rest} >/dev/null || ok=$? ;;  # two words: --enable NAME
      "unregister "*) { echo -1 > "$misc/$rest"; } 2>/dev/null || ok=$? ;;
      "register "*) { printf '%s' "$rest" > "$misc/register"; } 2>/dev/null || ok=$? ;;
      "keep "*) echo "binfmt: $rest" >&2 ;;
      "none "*) echo "binfmt: $rest" >&2; ok=1 ;;
      "") ;;
      *) echo "binfmt: unknown action: $action" >&2; return 2 ;;
    esac
    if [ "$ok" != 0 ]; then
      case "$action" in "none "*) ;; *) echo "binfmt: failed: $action" >&2 ;; esac
      status=1
    fi
  done
  return $status
}
