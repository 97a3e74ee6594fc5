"""DLR's "phone home" must never run: no network attempt from loading and running a model.

Hermetic: each check copies the installed `dlr` package (without its ccm_config.json) into a
temporary directory that a child process puts first on its path, so the real installation is
neither read nor changed. The child replaces the socket entry points with a guard that records
every attempt and refuses it, before anything else is imported.

The control case runs the same untouched copy without the backend's setup (plain `import dlr`,
`dlr.DLRModel`): it must attempt the network and enable phone-home in the config. That proves the
guard sees DLR's traffic, so the zero-attempt result of the backend case means something: without
the disabling step the backend case would look exactly like the control.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from connector.model.backends import dlr_runtime
from connector.errors import BackendError

PACKAGE = dlr_runtime.find_dlr_package()
if PACKAGE is None or shutil.which("gcc") is None:
    pytest.skip("needs the dlr package (dlr==1.6.0 wheel) and gcc", allow_module_level=True)
if not sys.platform.startswith("linux"):
    pytest.skip("the fixture is a Linux shared library", allow_module_level=True)

from tests.dlr_fixture.build import build_dlr_model  # noqa: E402
from tests.model.network_guard import GUARD  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = GUARD + textwrap.dedent("""

    mode, model_dir, report = sys.argv[1:4]
    import numpy as np
    tensor = np.zeros((1, 512, 512, 3), np.float32)
    result = {}
    if mode in ("backend", "imported-first"):
        if mode == "imported-first":
            import dlr  # someone else imported dlr before the backend could switch it off
            result["attempts_at_import"] = list(attempts)
            del attempts[:]
        from connector.model.backends import open_backend
        from connector.model.directory import open_model_directory
        from connector.errors import BackendError
        try:
            backend = open_backend(open_model_directory(model_dir), "cpu")
            backend.run(tensor)
            backend.run(tensor)
        except BackendError as e:
            result["error"] = str(e)
    else:  # control: dlr used directly, as its documentation shows
        import dlr
        model = dlr.DLRModel(model_dir, "cpu")
        model.run({"data": tensor})
    result["attempts"] = attempts
    result["dlr_imported"] = "dlr" in sys.modules
    result["dlr_file"] = getattr(sys.modules.get("dlr"), "__file__", None)
    with open(report, "w") as f:
        json.dump(result, f)
""")


def copy_dlr(dest) -> str:
    """A copy of the installed dlr package under dest/site/dlr, phone-home config removed."""
    site = os.path.join(str(dest), "site")
    shutil.copytree(PACKAGE, os.path.join(site, "dlr"),
                    ignore=shutil.ignore_patterns("__pycache__", dlr_runtime.PHONE_HOME_CONFIG))
    return site


def run_child(tmp_path, site, mode):
    model_dir = build_dlr_model(tmp_path / "model")
    report = str(tmp_path / "{}.json".format(mode))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([site, REPO]))
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, model_dir, report],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    with open(report) as f:
        result = json.load(f)
    result["stdout"] = proc.stdout.decode(errors="replace")
    return result


def config_of(site):
    path = os.path.join(site, "dlr", "counter", dlr_runtime.PHONE_HOME_CONFIG)
    with open(path) as f:
        return json.load(f)


# What dlr 1.6 leaves behind after it ran once with phone-home on. Its runtime-load report is
# skipped on the very first import (it records "device info sent" instead of sending) and sent
# by every later import, so both states matter.
USED_BEFORE = {"enable_phone_home": True, "enable_device_info": True}


def write_config(site, config):
    with open(os.path.join(site, "dlr", "counter", dlr_runtime.PHONE_HOME_CONFIG), "w") as f:
        json.dump(config, f)


@pytest.mark.parametrize("initial", [None, USED_BEFORE], ids=["fresh", "used-before"])
def test_backend_makes_no_network_attempt(tmp_path, initial):
    site = copy_dlr(tmp_path)
    if initial is not None:
        write_config(site, initial)
    result = run_child(tmp_path, site, "backend")
    assert result["dlr_file"].startswith(site)  # the copy, not the installed package
    assert "error" not in result
    assert result["attempts"] == []
    assert config_of(site) == dict(initial or {}, enable_phone_home=False)
    assert "CALL HOME FEATURE ENABLED" not in result["stdout"]


@pytest.mark.parametrize("initial", [None, USED_BEFORE], ids=["fresh", "used-before"])
def test_control_plain_dlr_phones_home_and_the_guard_sees_it(tmp_path, initial):
    site = copy_dlr(tmp_path)
    if initial is not None:
        write_config(site, initial)
    result = run_child(tmp_path, site, "control")
    assert result["dlr_file"].startswith(site)
    assert result["attempts"], "the guard saw no network attempt from plain dlr"
    assert any("neo-dlr.amazonaws.com" in a["args"] for a in result["attempts"])
    assert config_of(site)["enable_phone_home"] is True


def test_dlr_imported_before_the_backend_is_silenced_for_model_loads(tmp_path):
    site = copy_dlr(tmp_path)
    write_config(site, USED_BEFORE)
    result = run_child(tmp_path, site, "imported-first")
    assert result["attempts_at_import"]  # too late for the import-time report...
    assert "error" not in result
    assert result["attempts"] == []  # ...but model load and runs stay silent
    assert config_of(site)["enable_phone_home"] is False


def test_unwritable_config_refuses_to_load_without_importing_dlr(tmp_path):
    site = copy_dlr(tmp_path)
    # A directory where the file should be: not writable as a file even for root.
    os.mkdir(os.path.join(site, "dlr", "counter", "ccm_config.json"))
    result = run_child(tmp_path, site, "backend")
    assert "refusing to load DLR" in result["error"]
    assert "ccm_config.json" in result["error"]
    assert result["dlr_imported"] is False
    assert result["attempts"] == []


def test_existing_disabling_config_is_kept_and_enabling_one_rewritten(tmp_path):
    site = copy_dlr(tmp_path)
    package = os.path.join(site, "dlr")
    path = os.path.join(package, "counter", "ccm_config.json")
    with open(path, "w") as f:
        f.write('{"enable_phone_home": false, "note": "set by the admin"}')
    before = os.stat(path).st_mtime_ns
    assert dlr_runtime.disable_phone_home(package) == path
    assert os.stat(path).st_mtime_ns == before
    with open(path, "w") as f:
        f.write('{"enable_phone_home": true, "enable_device_info": true}')
    dlr_runtime.disable_phone_home(package)
    assert config_of(site) == {"enable_phone_home": False, "enable_device_info": True}
    for text in ("{}", "not json", "[false]"):
        with open(path, "w") as f:
            f.write(text)
        dlr_runtime.disable_phone_home(package)
        assert config_of(site)["enable_phone_home"] is False


def test_unwritable_config_in_process_and_missing_package(tmp_path):
    site = copy_dlr(tmp_path)
    os.mkdir(os.path.join(site, "dlr", "counter", "ccm_config.json"))
    with pytest.raises(BackendError, match="refusing to load DLR"):
        dlr_runtime.disable_phone_home(os.path.join(site, "dlr"))
    # A dlr without the counter module has nothing to switch off.
    bare = tmp_path / "bare" / "dlr"
    bare.mkdir(parents=True)
    assert dlr_runtime.disable_phone_home(str(bare)) is None
