# shellcheck shell=bash
# apt_mirror [SUITE...]: print the Debian mirror this machine's apt already uses, for scripts that
# fetch from one (debootstrap in scripts/arm/make-chroot.sh, a container build), instead of naming
# a host: a machine that may only reach its own mirror or proxy keeps working.
#
#   . scripts/lib/apt-mirror.sh
#   mirror=$(apt_mirror bookworm) || { echo "error: ..." >&2; exit 1; }
#
# Prints the first http(s)/file URI of an enabled `deb` source whose suite is SUITE (each SUITE in
# turn), then, on a Debian machine, one for the machine's own suite (VERSION_CODENAME of
# os-release: a Debian mirror serves every release). deb822 files first
# (sources.list.d/*.sources: `Types:`, `URIs:`, `Suites:`, `Enabled:`), then one-line ones
# (sources.list, sources.list.d/*.list: `deb [options] URI SUITE COMPONENT...`). Exit status 1,
# nothing printed, when none matches. $DEBIAN_MIRROR, when set, wins over all of it.
# APT_MIRROR_ETC (default /etc/apt) and APT_MIRROR_OS_RELEASE (default /etc/os-release) exist for
# tests.

_apt_mirror_deb822() {  # SUITE FILE...: first URI of a stanza listing SUITE
  awk -v want="$1" '
    function valid(u) { return u ~ /^(https?|file):/ }
    function flush(   n, s, i, u) {
      if (!found && types ~ /(^| )deb( |$)/ && tolower(enabled) !~ /^ *(no|false|0) *$/) {
        n = split(suites, s, /[ \t]+/)
        for (i = 1; i <= n; i++) if (s[i] == want) {
          n = split(uris, u, /[ \t]+/)
          for (i = 1; i <= n; i++) if (valid(u[i])) { print u[i]; found = 1; return }
          return
        }
      }
    }
    function reset() { flush(); types = uris = suites = enabled = field = "" }
    FNR == 1 { reset() }
    /^[ \t]*#/ { next }
    /^[ \t]*$/ { reset(); next }
    /^[ \t]/ { if (field == "types") types = types " " $0
               else if (field == "uris") uris = uris " " $0
               else if (field == "suites") suites = suites " " $0
               next }
    { i = index($0, ":"); field = tolower(substr($0, 1, i - 1)); value = substr($0, i + 1)
      if (field == "types") types = value; else if (field == "uris") uris = value
      else if (field == "suites") suites = value; else if (field == "enabled") enabled = value }
    END { flush() }
  ' "${@:2}"
}

_apt_mirror_one_line() {  # SUITE FILE...: first `deb URI SUITE` line's URI
  awk -v want="$1" '
    /^[ \t]*(#|$)/ { next }
    $1 == "deb" {
      line = $0
      sub(/^[ \t]*deb[ \t]+/, "", line)
      if (line ~ /^\[/) sub(/^\[[^]]*\][ \t]*/, "", line)   # [arch=amd64 signed-by=...]
      n = split(line, f, /[ \t]+/)
      if (n >= 2 && f[2] == want && f[1] ~ /^(https?|file):/) { print f[1]; exit }
    }
  ' "${@:2}"
}

apt_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return 0; fi
  local etc="${APT_MIRROR_ETC:-/etc/apt}" os_release="${APT_MIRROR_OS_RELEASE:-/etc/os-release}"
  local suites=("$@") id="" codename="" line suite f uri
  if [ -r "$os_release" ]; then
    while IFS= read -r line; do
      case "$line" in
        ID=*) id="${line#ID=}"; id="${id//\"/}" ;;
        VERSION_CODENAME=*) codename="${line#VERSION_CODENAME=}"; codename="${codename//\"/}" ;;
      esac
    done < "$os_release"
  fi
  [ "$id" = debian ] && [ -n "$codename" ] && suites+=("$codename")
  local deb822=() one_line=()
  for f in "$etc"/sources.list.d/*.sources; do [ -f "$f" ] && deb822+=("$f"); done
  for f in "$etc"/sources.list "$etc"/sources.list.d/*.list; do [ -f "$f" ] && one_line+=("$f"); done
  for suite in "${suites[@]}"; do
    uri=""
    [ ${#deb822[@]} -eq 0 ] || uri=$(_apt_mirror_deb822 "$suite" "${deb822[@]}")
    [ -n "$uri" ] || [ ${#one_line[@]} -eq 0 ] || uri=$(_apt_mirror_one_line "$suite" "${one_line[@]}")
    if [ -n "$uri" ]; then echo "$uri"; return 0; fi
  done
  return 1
}
