"""The SDK alone: a small distribution with no dependencies that serves user code (point 6)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests import images
from tests.dlr_fixture.build import RED, blank_image, draw_box
from tests.service_process import start_serve

ROOT = Path(__file__).resolve().parents[2]

CLIENT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import greengrass_machine_learning_sdk as ml
for heavy in ("numpy", "cv2", "yaml", "connector"):
    try:
        __import__(heavy)
    except ImportError:
        pass
    else:
        raise SystemExit("{} is importable: not an isolated interpreter".format(heavy))
with open(sys.argv[2], "rb") as f:
    body = f.read()
resp = ml.client("inference").invoke_inference_service(
    AlgoType="object-detection", ServiceName="objectDetection", ContentType="image/png", Body=body)
print(resp["Body"].read().decode("utf-8"))
"""


@pytest.fixture(scope="module")
def sdk_wheel(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdk")
    src = tmp / "src"
    shutil.copytree(str(ROOT / "ml_sdk"), str(src), ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
                          "--no-build-isolation", "--wheel-dir", str(tmp / "dist"), str(src)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert out.returncode == 0, out.stdout
    wheels = list((tmp / "dist").glob("greengrass_machine_learning_sdk-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_has_no_dependencies_and_only_the_sdk(sdk_wheel):
    with zipfile.ZipFile(str(sdk_wheel)) as z:
        names = z.namelist()
        metadata = z.read([n for n in names if n.endswith(".dist-info/METADATA")][0]).decode()
    assert "Requires-Dist" not in metadata
    assert "Name: greengrass-machine-learning-sdk" in metadata
    assert "Requires-Python: >=3.7" in metadata
    assert any(n.endswith("LICENSE") for n in names)
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"greengrass_machine_learning_sdk"}
    assert sum(z.file_size for z in zipfile.ZipFile(str(sdk_wheel)).infolist()) < 200000


def test_distribution_version_is_the_modules(sdk_wheel):
    """One version: the wheel's (what pip shows) is the module's __version__, the API it implements."""
    import greengrass_machine_learning_sdk as ml
    with zipfile.ZipFile(str(sdk_wheel)) as z:
        metadata = z.read([n for n in z.namelist() if n.endswith(".dist-info/METADATA")][0]).decode()
    assert "\nVersion: {}\n".format(ml.__version__) in metadata, metadata[:300]
    assert sdk_wheel.name.startswith("greengrass_machine_learning_sdk-{}-".format(ml.__version__))
    assert "(AWS {} API)".format(ml.__version__) in metadata


def test_sdk_alone_calls_the_service(sdk_wheel, tmp_path, model_dir):
    """Installed alone and run by an interpreter without site-packages (-S: no NumPy, no OpenCV),
    the SDK finds the standalone service through its client file and gets a prediction."""
    target = tmp_path / "site"
    with zipfile.ZipFile(str(sdk_wheel)) as z:
        z.extractall(str(target))  # what pip does for a pure-Python wheel
    proc, info, env = start_serve(tmp_path, model_dir)
    try:
        image = tmp_path / "red.png"
        image.write_bytes(images.png(draw_box(blank_image(), RED, 100, 150, 300, 250)))
        env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        out = subprocess.run([sys.executable, "-S", "-c", CLIENT, str(target), str(image)], env=env, cwd=str(tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                             timeout=120)
    finally:
        proc.stop()
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('{"prediction": [[0, ')
