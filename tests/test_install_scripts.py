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

ROOT = Path(__file__).resolve().parents[1]
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
