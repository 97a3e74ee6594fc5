"""The Greengrass Lambda package (connector/tools/deploy.py) and the memory headroom it documents."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from connector.tools import deploy
from tests import images
from tests.dlr_fixture.build import RED, blank_image, draw_box

ROOT = Path(__file__).resolve().parents[2]

HANDLER_CALL = r"""
import json, sys, types
sys.path.insert(0, sys.argv[1])
import connector.lambda_function as lf          # bootstraps from the parameters in the environment
with open(sys.argv[2], "rb") as f:
    image = f.read()
context = types.SimpleNamespace(client_context=types.SimpleNamespace(custom={"Content-Type": "image/png"}),
                                invocation_id="inv-1")
print(json.dumps(lf.function_handler(image, context)))
lf._handler.service.close()
"""


def test_memory_headroom():
    assert deploy.outer_memory_kb(500000) == 2 * 500000 + deploy.SUPERVISOR_KB
    assert deploy.memory_max(500000) == "{}K".format(2 * 500000 + deploy.SUPERVISOR_KB)


def test_memory_max_from_a_parameter_file(tmp_path):
    cfg = tmp_path / "p.json"
    cfg.write_text(json.dumps({"MLModelDestinationPath": "/m", "MLModelResourceId": "r",
                               "LocalInferenceServiceName": "objectDetection",
                               "LocalInferenceServiceTimeoutSeconds": "10",
                               "LocalInferenceServiceMemoryLimitKB": "300000"}))
    out = subprocess.run([sys.executable, "-m", "connector.tools.deploy", "memory-max", "--config", str(cfg)],
                         cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "{}K".format(600000 + deploy.SUPERVISOR_KB)
    cfg.write_text(json.dumps({"LocalInferenceServiceMemoryLimitKB": "lots"}))
    out = subprocess.run([sys.executable, "-m", "connector.tools.deploy", "memory-max", "--config", str(cfg)],
                         cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=60)
    assert out.returncode == 2 and "error:" in out.stderr


@pytest.fixture(scope="module")
def lambda_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lambda")
    sizes = deploy.build_lambda_zip(str(tmp / "fn.zip"))
    assert sizes["zipped"] < deploy.DIRECT_UPLOAD_LIMIT and sizes["unzipped"] < 2 * 2**20
    with zipfile.ZipFile(str(tmp / "fn.zip")) as z:
        names = z.namelist()
        z.extractall(str(tmp / "fn"))
    assert "connector/lambda_function.py" in names
    assert "greengrass_machine_learning_sdk/inference.py" in names
    assert not [n for n in names if n.startswith("connector/demos/") and n != "connector/demos/__init__.py"]
    assert not [n for n in names if "__pycache__" in n or n.endswith((".onnx", ".so", ".params"))]
    # An interpreter with none of the dependencies: they must come from the "device".
    venv.EnvBuilder(with_pip=False).create(str(tmp / "rt"))
    return tmp


def device_site_packages(tmp: Path) -> str:
    """This venv's site-packages as scripts/install leaves a device's: libdlr.so linked into the dlr
    package (the Lambda's interpreter has another sys.prefix, where DLR would look first)."""
    src = Path(site.getsitepackages()[0])
    dst = tmp / "device-site-packages"
    dst.mkdir()
    for entry in src.iterdir():
        if entry.name != "dlr":
            (dst / entry.name).symlink_to(entry)
    (dst / "dlr").mkdir()
    for entry in (src / "dlr").iterdir():
        (dst / "dlr" / entry.name).symlink_to(entry)
    libdlr = Path(sys.prefix) / "dlr" / "libdlr.so"
    if libdlr.exists() and not (dst / "dlr" / "libdlr.so").exists():
        (dst / "dlr" / "libdlr.so").symlink_to(libdlr)
    return str(dst)


def _call(lambda_dir, model_dir, env_extra):
    image = lambda_dir / "red.png"
    image.write_bytes(images.png(draw_box(blank_image(), RED, 100, 150, 300, 250)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GG_", "MY_FUNCTION", "PYTHON"))}
    env.update(MLModelDestinationPath=str(model_dir), MLModelResourceId="fixture",
               LocalInferenceServiceName="objectDetection", LocalInferenceServiceTimeoutSeconds="10",
               LocalInferenceServiceMemoryLimitKB="500000", **env_extra)
    return subprocess.run([str(lambda_dir / "rt" / "bin" / "python"), "-c", HANDLER_CALL,
                           str(lambda_dir / "fn"), str(image)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)


def test_device_package_serves_with_the_devices_libraries(lambda_dir, model_dir):
    """The zip alone, run by a bare interpreter, serves once GG_ML_SITE_PACKAGES names the device's
    site-packages: the Lambda entry and the worker process it starts both find NumPy/OpenCV there."""
    out = _call(lambda_dir, model_dir, {"GG_ML_SITE_PACKAGES": device_site_packages(lambda_dir)})
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    rows = json.loads(answer["Body"])["prediction"]
    assert [r[0] for r in rows] == [0] and answer["ContentType"] == "application/json"


def test_device_package_without_the_device_libraries_says_what_is_missing(lambda_dir, model_dir):
    out = _call(lambda_dir, model_dir, {})
    assert out.returncode != 0
    assert "No module named" in out.stderr


def test_bundle_refuses_architectures_pypi_cannot_serve(tmp_path):
    with pytest.raises(SystemExit, match="no armv7l wheels"):
        deploy.build_lambda_zip(str(tmp_path / "x.zip"), deps="bundle", arch="armv7l")
    with pytest.raises(SystemExit, match="no Python 3.7 wheel"):
        deploy.build_lambda_zip(str(tmp_path / "x.zip"), deps="bundle", python="3.7", runtime="onnx")
    assert not (tmp_path / "x.zip").exists()


def test_lambda_zip_never_writes_through_a_planted_link(tmp_path):
    """Links planted at the fixed temporary name the package used (<out>.part) and at <out>
    itself: both targets stay as they were, and <out> becomes the package, a file of its own."""
    out = tmp_path / "fn.zip"
    victims = {name: tmp_path / name for name in ("victim-part", "victim-out")}
    for victim in victims.values():
        victim.write_bytes(b"precious")
    Path(str(out) + ".part").symlink_to(victims["victim-part"])
    out.symlink_to(victims["victim-out"])
    result = subprocess.run([sys.executable, "-m", "connector.tools.deploy", "lambda-zip", "--out", str(out)],
                            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for victim in victims.values():
        assert victim.read_bytes() == b"precious"
    assert not out.is_symlink() and zipfile.is_zipfile(str(out))
    assert (out.stat().st_mode & 0o777) == 0o644
    with zipfile.ZipFile(str(out)) as z:
        assert "connector/lambda_function.py" in z.namelist()
    # nothing of the temporary file is left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fn.zip", "fn.zip.part"] + list(victims))


def _wheel(wheelhouse: Path, name: str, version: str) -> None:
    """A minimal pure-Python wheel, built by hand (no network, no build backend)."""
    wheelhouse.mkdir(exist_ok=True)
    info = "{}-{}.dist-info".format(name, version)
    files = {"{}/__init__.py".format(name): "",
             info + "/METADATA": "Metadata-Version: 2.1\nName: {}\nVersion: {}\n".format(name, version),
             info + "/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[info + "/RECORD"] = "".join("{},,\n".format(n) for n in list(files) + [info + "/RECORD"])
    with zipfile.ZipFile(str(wheelhouse / "{}-{}-py3-none-any.whl".format(name, version)), "w") as z:
        for arcname, text in files.items():
            z.writestr(arcname, text)


def test_bundle_install_prints_no_resolver_error_about_the_build_machine(tmp_path, monkeypatch, capfd):
    """Offline part of `--deps bundle` (the real bundle needs the package index): the pip command it
    runs, installing into the Lambda's directory a version that the build machine's own packages
    would not accept (pytest here needs pluggy >= 1), prints no resolver ERROR about those packages:
    they are not in the bundle."""
    _wheel(tmp_path / "wheels", "pluggy", "0.0.1")
    for k in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # this machine's indexes stay out of it
    target = tmp_path / "target"
    deploy.run_pip(deploy.pip_install_command(str(target), "x86_64", "3.8") +
                   ["--no-index", "--find-links", str(tmp_path / "wheels"), "pluggy==0.0.1"])
    err = capfd.readouterr().err
    assert (target / "pluggy-0.0.1.dist-info").is_dir()
    assert "ERROR" not in err and "incompatible" not in err, err


def test_pip_messages_pass_through_except_the_expected_one(capfd):
    say = [sys.executable, "-c", "print('WARNING: Target directory /t/dlr already exists. Specify --upgrade'); "
           "print('WARNING: something else'); raise SystemExit(int(__import__('sys').argv[1]))"]
    deploy.run_pip(say + ["0"], expected=r"^WARNING: Target directory .*/dlr already exists")
    err = capfd.readouterr().err
    assert "something else" in err and "Target directory" not in err
    with pytest.raises(SystemExit, match=r"pip failed \(exit status 3\)"):
        deploy.run_pip(say + ["3"], expected=r"^WARNING: Target directory .*/dlr already exists")
    err = capfd.readouterr().err
    assert "something else" in err and "Target directory" in err  # all of it when pip fails
