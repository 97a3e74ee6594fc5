"""scripts/lib/apt-mirror.sh (the Debian mirror from the machine's apt sources) and
scripts/lib/binfmt.sh (how make-chroot.sh registers qemu), run by bash on fixture files: never the
real /etc/apt nor /proc/sys/fs/binfmt_misc."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "scripts" / "lib"


def bash(lib: str, call: str, *args: str, env: Optional[Dict[str, str]] = None,
         stdin: str = "") -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "DEBIAN_MIRROR"}
    full.update(env or {})
    return subprocess.run(["bash", "-c", 'set -euo pipefail; . "$0"; ' + call + ' "$@"', str(LIB / lib), *args],
                          env=full, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)


# ---- apt_mirror ------------------------------------------------------------------------------------

DEB822 = """\
Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main

Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""

ONE_LINE = """\
# deb http://commented.example/debian trixie main
deb-src http://src.example/debian trixie main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://one.example/debian trixie main contrib
deb http://security.example/debian-security trixie-security main
"""


@pytest.fixture()
def apt(tmp_path):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    os_release = tmp_path / "os-release"
    os_release.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_CODENAME=bookworm\n')

    def run(*suites, **env):
        return bash("apt-mirror.sh", "apt_mirror", *suites,
                    env=dict({"APT_MIRROR_ETC": str(etc), "APT_MIRROR_OS_RELEASE": str(os_release)}, **env))
    run.etc, run.os_release = etc, os_release
    return run


def test_deb822_sources(apt):
    (apt.etc / "sources.list.d" / "debian.sources").write_text(DEB822)
    out = apt("bookworm")
    assert (out.returncode, out.stdout) == (0, "http://mirror.example/debian\n"), out.stderr
    assert apt("bookworm-security").stdout == "http://deb.debian.org/debian-security\n"
    # A suite no stanza lists: the machine's own suite (a Debian mirror serves every release).
    assert apt("trixie").stdout == "http://mirror.example/debian\n"


def test_deb822_disabled_stanza_and_continuation_lines(apt):
    (apt.etc / "sources.list.d" / "a.sources").write_text(
        "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: mirror+file:/etc/apt/mirrors.txt\n http://cont.example/debian\nSuites:\n bookworm\n")
    assert apt("bookworm").stdout == "http://cont.example/debian\n"


def test_one_line_sources(apt):
    (apt.etc / "sources.list").write_text(ONE_LINE)
    assert apt("trixie").stdout == "http://one.example/debian\n"
    assert apt("trixie-security").stdout == "http://security.example/debian-security\n"
    # No line for bookworm, and the machine's suite (bookworm) has none either.
    out = apt("bookworm")
    assert (out.returncode, out.stdout) == (1, "")


def test_deb822_is_read_before_one_line_files_and_list_files_count(apt):
    (apt.etc / "sources.list.d" / "extra.list").write_text("deb http://list.example/debian bookworm main\n")
    assert apt("bookworm").stdout == "http://list.example/debian\n"
    (apt.etc / "sources.list.d" / "debian.sources").write_text(DEB822)
    assert apt("bookworm").stdout == "http://mirror.example/debian\n"


def test_no_sources_an_ubuntu_machine_and_the_override(apt):
    out = apt("bookworm")
    assert (out.returncode, out.stdout) == (1, "")
    # An Ubuntu archive is no Debian mirror: the machine's suite is a fallback on Debian only.
    apt.os_release.write_text("ID=ubuntu\nVERSION_CODENAME=noble\n")
    (apt.etc / "sources.list").write_text("deb http://archive.ubuntu.com/ubuntu noble main\n")
    assert apt("bookworm").returncode == 1
    assert apt("bookworm", DEBIAN_MIRROR="http://override.example/debian").stdout == \
        "http://override.example/debian\n"


def test_make_chroot_takes_its_mirror_from_the_library():
    text = (ROOT / "scripts" / "arm" / "make-chroot.sh").read_text()
    assert "deb.debian.org" not in text and 'mirror=$(apt_mirror bookworm)' in text


# ---- binfmt_plan / binfmt_apply ----------------------------------------------------------------------

MAGIC = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
CONF = ":qemu-aarch64:M::{}:{}:/usr/bin/qemu-aarch64-static:FPC".format(MAGIC, MASK)
OLD = "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"   # Debian 12's qemu 7.2 through binfmt-support
DISPLAY = """qemu-aarch64 (enabled):
     package = qemu-user-static
        type = magic
      offset = 0
       magic = {}
        mask = {}
 interpreter = {}
    detector =
""".format(MAGIC, MASK, OLD)


@pytest.fixture()
def binfmt(tmp_path):
    misc = tmp_path / "binfmt_misc"
    misc.mkdir()
    usr, etc = tmp_path / "usr-lib-binfmt.d", tmp_path / "etc-binfmt.d"
    usr.mkdir()
    etc.mkdir()

    def plan(display=""):
        out = bash("binfmt.sh", "binfmt_plan", "qemu-aarch64", str(misc), display, str(etc), str(usr))
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    def kernel(interpreter):
        (misc / "qemu-aarch64").write_text("enabled\ninterpreter {}\nflags: POCF\noffset 0\nmagic 7f454c46\n"
                                           .format(interpreter))
    plan.misc, plan.usr, plan.etc, plan.kernel = misc, usr, etc, kernel
    return plan


def test_update_binfmts_knows_it(binfmt):
    assert binfmt(DISPLAY) == ["update-binfmts --enable qemu-aarch64"]          # no kernel entry yet
    binfmt.kernel(OLD)
    assert binfmt(DISPLAY) == ["update-binfmts --disable qemu-aarch64", "update-binfmts --enable qemu-aarch64"]


def test_qemu_10_binfmt_d_only_registers_the_systemd_binfmt_way(binfmt):
    """bookworm-backports' qemu 10: update-binfmts does not know the format (it prints nothing), a
    binfmt.d file does; no kernel entry (no systemd in a container) -> register that line."""
    (binfmt.usr / "qemu-aarch64-static.conf").write_text(
        "# from qemu-user-static\n:qemu-aarch64_be:M::x:y:/usr/bin/qemu-aarch64_be-static:FPC\n" + CONF + "\n")
    assert binfmt("") == ["register " + CONF]
    binfmt.kernel("/usr/bin/qemu-aarch64-static")  # registered from that file (systemd-binfmt, or us)
    assert binfmt("") == ["unregister qemu-aarch64", "register " + CONF]


def test_never_disables_an_entry_it_did_not_create(binfmt):
    (binfmt.usr / "qemu-aarch64.conf").write_text(CONF + "\n")
    binfmt.kernel("/opt/other/qemu-aarch64")
    assert binfmt("") == ["keep qemu-aarch64: the kernel's entry runs /opt/other/qemu-aarch64, "
                          "not the binfmt.d file's /usr/bin/qemu-aarch64-static"]
    # update-binfmts knows one, systemd-binfmt registered another: update-binfmts must not remove it.
    binfmt.kernel("/usr/bin/qemu-aarch64-static")
    assert binfmt(DISPLAY) == ["keep qemu-aarch64: the kernel's entry runs /usr/bin/qemu-aarch64-static, "
                               "not update-binfmts' {}".format(OLD)]


def test_etc_overrides_usr_lib_and_nothing_known(binfmt):
    assert binfmt("") == ["none qemu-aarch64: update-binfmts does not know it and no binfmt.d file registers it"]
    binfmt.kernel("/x/qemu")
    assert binfmt("")[0].startswith("keep qemu-aarch64: registered (runs /x/qemu) by neither")
    (binfmt.misc / "qemu-aarch64").unlink()
    (binfmt.usr / "qemu-aarch64.conf").write_text(CONF + "\n")
    local = CONF.replace("/usr/bin/qemu-aarch64-static", "/usr/local/bin/qemu-aarch64")
    (binfmt.etc / "qemu-aarch64.conf").write_text(local + "\n")
    assert binfmt("") == ["register " + local]


def test_apply_writes_what_the_plan_says(binfmt, tmp_path):
    binfmt.kernel("/usr/bin/qemu-aarch64-static")
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "update-binfmts").write_text('#!/bin/sh\necho "$@" >> "{}"\n'.format(tmp_path / "calls"))
    (stub / "update-binfmts").chmod(0o755)
    plan = "\n".join(["unregister qemu-aarch64", "register " + CONF, "update-binfmts --enable qemu-aarch64", ""])
    out = bash("binfmt.sh", "binfmt_apply", str(binfmt.misc), stdin=plan,
               env={"PATH": "{}:{}".format(stub, os.environ["PATH"])})
    assert out.returncode == 0, out.stderr
    assert (binfmt.misc / "qemu-aarch64").read_text() == "-1\n"
    assert (binfmt.misc / "register").read_text() == CONF   # byte for byte: backslashes kept
    assert (tmp_path / "calls").read_text() == "--enable qemu-aarch64\n"
    out = bash("binfmt.sh", "binfmt_apply", str(binfmt.misc), stdin="none qemu-aarch64: nothing\n")
    assert out.returncode == 1 and "binfmt: qemu-aarch64: nothing" in out.stderr
    # A step that fails (the kernel refuses the line, here: no such directory) is said and counted.
    out = bash("binfmt.sh", "binfmt_apply", str(tmp_path / "absent"), stdin="register " + CONF + "\n")
    assert out.returncode == 1 and "binfmt: failed: register :qemu-aarch64:" in out.stderr
