"""scripts/install/*.sh: refusals are clear and say so in the exit status; a failure names the step.

The full installs run for real on x86_64 (by hand, into a scratch prefix) and in the ARM chroots
(scripts/arm/run-arm.sh); these tests cover what must hold without touching this system."""
from __future__ import annotations

import os
import shutil
import sys
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {"x86_64": "install-x86_64.sh", "armv7l": "install-armv7.sh", "aarch64": "install-aarch64.sh"}
OS_IDS = {"x86_64": "debian", "armv7l": "raspbian", "aarch64": "debian"}


def run(script, *args, machine="x86_64", os_id="debian", path=None, tmp=None):
    release = tmp / "os-release"
    release.write_text('NAME="Test"\nID={}\nVERSION_ID="1"\n'.format(os_id))
    env = dict(os.environ, GGML_MACHINE=machine, GGML_OS_RELEASE=str(release))
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["bash", str(ROOT / "scripts" / "install" / script), *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)


@pytest.mark.parametrize("arch", sorted(SCRIPTS))
def test_wrong_architecture_is_refused(arch, tmp_path):
    out = run(SCRIPTS[arch], "--prefix", str(tmp_path / "p"), machine="riscv64", tmp=tmp_path)
    assert out.returncode == 3
    assert "unsupported platform" in out.stderr and "riscv64" in out.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("arch", sorted(SCRIPTS))
def test_unsupported_os_is_refused(arch, tmp_path):
    out = run(SCRIPTS[arch], "--prefix", str(tmp_path / "p"), machine=arch, os_id="fedora", tmp=tmp_path)
    assert out.returncode == 3
    assert "OS 'fedora'" in out.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("arch", sorted(SCRIPTS))
def test_help_and_bad_options(arch, tmp_path):
    out = run(SCRIPTS[arch], "--help", machine=arch, os_id=OS_IDS[arch], tmp=tmp_path)
    assert out.returncode == 0 and "--prefix DIR" in out.stdout and "--systemd" in out.stdout
    out = run(SCRIPTS[arch], "--frobnicate", machine=arch, os_id=OS_IDS[arch], tmp=tmp_path)
    assert out.returncode == 1 and "unknown option --frobnicate" in out.stderr
    out = run(SCRIPTS[arch], "--systemd", machine=arch, os_id=OS_IDS[arch], tmp=tmp_path)
    assert out.returncode == 1 and "--systemd needs --config" in out.stderr
    out = run(SCRIPTS[arch], "--libdlr", str(tmp_path / "none.so"), machine=arch, os_id=OS_IDS[arch], tmp=tmp_path)
    assert out.returncode == 1 and "none.so: no such readable file" in out.stderr


def test_a_failed_step_is_reported_with_what_was_done(tmp_path):
    """Amazon Linux without yum/dnf (a PATH of only the basic tools): the first step fails, and
    the script says which step, that the system is partly installed, and how to go on or undo."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sed", "head", "tr", "uname", "dirname", "id", "cat", "printf"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    out = run("install-x86_64.sh", "--prefix", str(tmp_path / "p"), os_id="amzn", path=str(bin_dir), tmp=tmp_path)
    assert out.returncode != 0
    assert "stopped at step 'system packages (yum/dnf)'" in out.stderr
    assert "partly installed" in out.stderr and "run this script again" in out.stderr
    assert "rm -rf {}".format(tmp_path / "p") in out.stderr


def test_systemd_unit_template():
    unit = (ROOT / "scripts" / "install" / "gg-ml-connector.service").read_text()
    for line in ("MemoryMax=@MEMORY_MAX@", "Restart=on-failure", "ExecStart=@PREFIX@/bin/python -m connector serve",
                 "--client-file-group gg-ml-connector",
                 "StartLimitBurst=", "User=gg-ml-connector"):
        assert line in unit
    service = unit.split("[Service]")[1].split("[Install]")[0]
    assert "StartLimitBurst" not in service  # a [Unit] setting; systemd ignores it under [Service]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_unit_verifies_as_installed(tmp_path):
    """The unit as install_systemd_unit writes it: systemd accepts every key and value (it warns
    on stderr, exit status 0, about unknown keys and bad values, hence the check of stderr)."""
    from connector.tools.deploy import memory_max
    text = (ROOT / "scripts" / "install" / "gg-ml-connector.service").read_text()
    unit = tmp_path / "gg-ml-connector.service"

    def verify(body):
        unit.write_text(body)
        return subprocess.run(["systemd-analyze", "verify", str(unit)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, timeout=60).stdout

    prefix = str(Path(sys.executable).parent.parent)  # a venv with bin/python, as the install makes
    good = text.replace("@PREFIX@", prefix).replace("@MEMORY_MAX@", memory_max(500000))
    assert verify(good).strip() == ""
    assert "Invalid memory limit" in verify(good.replace(memory_max(500000), "lots"))


def test_install_writes_never_follow_planted_links(tmp_path):
    """install_systemd_unit and place_libdlr, as --systemd --config and --libdlr run them, with
    links planted where they write (the unit, its parameters, the library): every link is
    replaced by a file of its own, the targets stay as they were, no temporary file is left.
    The interpreter and systemd are stand-ins (this must not touch the system)."""
    common = (ROOT / "scripts" / "install" / "common.sh").read_text()
    # a common.sh that ignored these would write to this machine's /etc
    assert "GGML_ETC_DIR" in common and "GGML_UNIT_DIR" in common
    etc, units, prefix, pkg = (tmp_path / n for n in ("etc", "units", "prefix", "pkg"))
    for d in (etc, units, prefix / "bin", prefix / "dlr", pkg):
        d.mkdir(parents=True)
    python = prefix / "bin" / "python"  # memory-max prints a value; find_dlr_package prints pkg
    python.write_text('#!/bin/sh\nif [ "$1" = -m ]; then echo 1126400K; else echo {}; fi\n'.format(pkg))
    python.chmod(0o755)
    config, libdlr = tmp_path / "params.yaml", tmp_path / "given-libdlr.so"
    config.write_text("LocalInferenceServiceName: objectDetection\n")
    libdlr.write_bytes(b"\x7fELF a library")
    victims = {}
    for planted in (etc / "params.yaml", units / "gg-ml-connector.service", prefix / "dlr" / "libdlr.so"):
        victim = tmp_path / ("victim-" + planted.name)
        victim.write_bytes(b"precious")
        planted.symlink_to(victim)
        victims[planted] = victim
    (pkg / "libdlr.so").symlink_to(tmp_path)  # a link to a directory: ln -sf would go into it
    script = ('source {common}; as_root() {{ "$@"; }}; systemctl() {{ :; }}; useradd() {{ :; }}; '
              'id() {{ return 1; }}; SYSTEMD=1 CONFIG={config} LIBDLR={libdlr} PREFIX={prefix}; '
              'install_systemd_unit; place_libdlr').format(
        common=ROOT / "scripts" / "install" / "common.sh", config=config, libdlr=libdlr, prefix=prefix)
    env = dict(os.environ, GGML_ETC_DIR=str(etc), GGML_UNIT_DIR=str(units))
    out = subprocess.run(["bash", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for planted, victim in victims.items():
        assert victim.read_bytes() == b"precious", planted
        assert not planted.is_symlink() and (planted.stat().st_mode & 0o777) == 0o644, planted
    assert (etc / "params.yaml").read_text() == config.read_text()
    assert (prefix / "dlr" / "libdlr.so").read_bytes() == libdlr.read_bytes()
    unit = (units / "gg-ml-connector.service").read_text()
    assert "ExecStart={}/bin/python -m connector serve".format(prefix) in unit and "MemoryMax=1126400K" in unit
    assert os.readlink(str(pkg / "libdlr.so")) == str(prefix / "dlr" / "libdlr.so")
    assert not os.path.lexists(str(tmp_path / "libdlr.so"))  # not made inside the linked directory
    assert not [p for d in (etc, units, prefix / "dlr") for p in d.iterdir() if p.name.startswith(".")]
    # a link in place of a directory the installer writes into is refused, naming it
    (prefix / "dlr" / "libdlr.so").unlink()
    (prefix / "dlr").rmdir()
    (prefix / "dlr").symlink_to(tmp_path)
    out = subprocess.run(["bash", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=60)
    assert out.returncode != 0 and "{} is a symbolic link".format(prefix / "dlr") in out.stderr


def test_systemd_unit_gives_the_feedback_spool_a_writable_state_directory():
    """ProtectSystem=strict makes everything read-only but the unit's own directories: the
    default spool ($XDG_STATE_HOME, else ~/.local/state of a user without a home) must lie in
    its StateDirectory, which only the service user may enter."""
    from connector.feedback.config import default_spool_directory
    unit = (ROOT / "scripts" / "install" / "gg-ml-connector.service").read_text()
    service = unit.split("[Service]")[1].split("[Install]")[0]
    settings = {}
    environment = {"HOME": "/home/gg-ml-connector"}  # what systemd sets for User=, nonexistent
    for line in service.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            if key == "Environment":
                name, _, text = value.partition("=")
                environment[name] = text
            else:
                settings[key] = value
    assert settings["ProtectSystem"] == "strict"
    assert settings["StateDirectoryMode"] == "0700"
    state = "/var/lib/" + settings["StateDirectory"]
    spool = default_spool_directory(environment)
    assert spool.startswith(state + "/"), (spool, state)
