"""GG_ML_SITE_PACKAGES: `import connector` runs site.addsitedir on each directory it names, which
executes the directory's *.pth files. A directory (or a *.pth file) another unprivileged user could
write would run their code as the connector, so importing the package is refused with one line
naming the variable and the reason, before any of it runs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connector import settings
from connector.errors import ParameterError

ROOT = Path(__file__).resolve().parents[1]
NAME = "GG_ML_SITE_PACKAGES"


def site_packages(tmp_path: Path, mode: int = 0o755) -> Path:
    """A site-packages whose .pth file would leave a marker beside it and whose module says hello."""
    directory = tmp_path / "site-packages"
    directory.mkdir()
    (directory / "planted.pth").write_text(
        "import os; open(os.path.join({!r}, 'pth-ran'), 'w').close()\n".format(str(tmp_path)))
    (directory / "device_module.py").write_text("HELLO = 'from the device'\n")
    directory.chmod(mode)
    return directory


def import_connector(value: str):
    env = dict(os.environ, **{NAME: value})
    return subprocess.run([sys.executable, "-c", "import connector, device_module; "
                           "print(device_module.HELLO)"], cwd=str(ROOT), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=120)


def test_a_safe_directory_is_added_and_its_pth_files_run(tmp_path):
    directory = site_packages(tmp_path)
    out = import_connector(str(directory))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "from the device" and (tmp_path / "pth-ran").exists()


def test_a_directory_others_can_write_is_refused_before_its_pth_files_run(tmp_path):
    directory = site_packages(tmp_path, 0o777)
    out = import_connector(str(directory))
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: GG_ML_SITE_PACKAGES names ") and \
        "is writable by others (mode 777)" in last and "writable only by root or this user" in last, last
    assert not (tmp_path / "pth-ran").exists(), "the planted .pth file ran"


def test_a_pth_file_its_group_can_write_is_refused(tmp_path):
    directory = site_packages(tmp_path)
    (directory / "planted.pth").chmod(0o664)
    with pytest.raises(ParameterError, match=r"planted\.pth is writable by its group \(mode 664\)"):
        settings.code_directories(NAME, {NAME: str(directory)})


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
def test_a_pth_file_or_directory_of_another_user_is_refused(tmp_path):
    directory = site_packages(tmp_path)
    os.chown(str(directory / "planted.pth"), 4242, -1)
    with pytest.raises(ParameterError, match=r"planted\.pth belongs to uid 4242, not to root or this user"):
        settings.code_directories(NAME, {NAME: str(directory)})
    os.chown(str(directory / "planted.pth"), 0, -1)
    os.chown(str(directory), 4242, -1)
    with pytest.raises(ParameterError, match=r"belongs to uid 4242, not to this user"):
        settings.code_directories(NAME, {NAME: str(directory)})


def test_a_linked_pth_file_is_judged_by_what_it_links_to(tmp_path):
    directory = site_packages(tmp_path)
    target = tmp_path / "shared"
    target.mkdir(mode=0o777)
    target.chmod(0o777)
    (target / "real.pth").write_text("\n")
    (directory / "linked.pth").symlink_to(target / "real.pth")
    with pytest.raises(ParameterError, match=r"shared is writable by others"):
        settings.code_directories(NAME, {NAME: str(directory)})


def test_relative_and_missing_entries(tmp_path, monkeypatch):
    directory = site_packages(tmp_path)
    monkeypatch.chdir(str(tmp_path))
    with pytest.raises(ParameterError, match="GG_ML_SITE_PACKAGES names the relative path 'site-packages'"):
        settings.code_directories(NAME, {NAME: "site-packages"})
    listed = os.pathsep.join(["", str(tmp_path / "missing"), str(directory)])
    assert settings.code_directories(NAME, {NAME: listed}) == [str(directory)]
    assert settings.code_directories(NAME, {}) == []
