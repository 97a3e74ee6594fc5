"""Check that the `onnx` extra's ONNX Runtime range really works: same predictions everywhere.

    .venv/bin/python scripts/ort_compat.py [--runtime PYTHON:ORT_VERSION ...] [MODEL_DIR ...]

Builds the test detectors of every output format (tests/onnx_models.py) next to the bundled demo
models, the real ONNX exports in tests/models (GluonCV SSD and YOLOv3, which newer ONNX Runtimes
only load with an optimiser switched off) and any MODEL_DIR given, computes their predictions
on a few images with this venv's ONNX Runtime, then, for each PYTHON:ORT_VERSION (default: the
oldest ONNX Runtime setup.py allows, on Python 3.8, the oldest Python the runtime supports),
makes a throwaway venv under $ORT_COMPAT_DIR (default /tmp/ort-compat) with that ONNX Runtime,
NumPy, OpenCV and PyYAML from the package index, and compares. Prints one line per model and
runtime; exit status 1 when any model fails to load or answers differently. Needs the network
to PyPI the first time (venvs are reused), so it is run by hand, not by the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_RUNTIMES = ["3.8:1.18.0"]
TOLERANCE = 1e-3

CHILD = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import onnxruntime
from connector.model.engine import Engine
from connector.errors import ConnectorError
result = {"ort": onnxruntime.__version__, "python": sys.version.split()[0], "models": {}}
for d in json.loads(sys.argv[2]):
    try:
        engine = Engine.from_model_dir(d)
        result["models"][d] = [engine.infer(open(p, "rb").read())["prediction"]
                               for p in json.loads(sys.argv[3])]
    except ConnectorError as e:
        result["models"][d] = "error: {}".format(e)
print(json.dumps(result))
"""


def find_python(version: str) -> str:
    """An interpreter of `version` (e.g. "3.8"): pyenv's install first (its shims fail when the
    version is not selected), then python3.8 on PATH."""
    pyenv = os.path.expanduser("~/.pyenv/versions")
    if os.path.isdir(pyenv):
        for name in sorted(os.listdir(pyenv), reverse=True):
            if name == version or name.startswith(version + "."):
                return os.path.join(pyenv, name, "bin", "python")
    found = shutil.which("python" + version)
    if found and ".pyenv/shims" not in found:
        return found
    raise SystemExit("no Python {} found (pyenv or python{} on PATH)".format(version, version))


def venv_for(python_version: str, ort_version: str, base: str) -> str:
    venv = os.path.join(base, "py{}-ort{}".format(python_version, ort_version))
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(os.path.join(venv, ".complete")):
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([find_python(python_version), "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "onnxruntime=={}".format(ort_version),
                        "numpy<2", "opencv-python-headless", "pyyaml"], check=True)
        open(os.path.join(venv, ".complete"), "w").close()
    return py


def build_models(work: str) -> List[str]:
    from connector.demos import bundled_models
    from tests import onnx_models
    dirs = [d for d in bundled_models().values() if os.path.exists(os.path.join(d, "model.onnx"))]
    exports = os.path.join(ROOT, "tests", "models")  # real exports made by scripts/tools
    if os.path.isdir(exports):
        dirs += [os.path.join(exports, n) for n in sorted(os.listdir(exports))
                 if os.path.exists(os.path.join(exports, n, "model.onnx"))]
    builders = {"yolov8": lambda p: onnx_models.ultralytics_detector(p, "yolov8"),
                "yolov5": lambda p: onnx_models.ultralytics_detector(p, "yolov5"),
                "yolo-nms": lambda p: onnx_models.ultralytics_detector(p, "nms"),
                "torchvision": onnx_models.torchvision_detector,
                "gluoncv-nchw-300": lambda p: onnx_models.red_detector(p, 300, "NCHW")}
    for name, build in builders.items():
        d = os.path.join(work, name)
        os.makedirs(d, exist_ok=True)
        build(os.path.join(d, "model.onnx"))
        dirs.append(d)
    return dirs


def write_images(work: str) -> List[str]:
    import numpy as np

    from tests import images
    rng = np.random.RandomState(7)
    made = {"scene.png": images.png(images.scene(640, 480)),
            "noise.jpg": images.jpeg(rng.randint(0, 256, (300, 500, 3)).astype(np.uint8))}
    paths = []
    for name, data in made.items():
        paths.append(os.path.join(work, name))
        with open(paths[-1], "wb") as f:
            f.write(data)
    return paths


def run(python: str, dirs: List[str], pictures: List[str]) -> Dict[str, object]:
    proc = subprocess.run([python, "-c", CHILD, ROOT, json.dumps(dirs), json.dumps(pictures)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit("{} failed:\n{}".format(python, proc.stderr))
    return json.loads(proc.stdout.splitlines()[-1])


def same(a: object, b: object) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    import numpy as np
    return all(len(x) == len(y) and (not x or np.allclose(np.array(x), np.array(y), atol=TOLERANCE))
               for x, y in zip(a, b))  # type: ignore[arg-type]


def describe_difference(ref: object, got: object) -> str:
    if isinstance(got, str):
        return got[:400]
    if isinstance(ref, str):
        return "loads here but not with the reference runtime: {}".format(ref[:300])
    return "predictions differ from the reference ({} vs {} rows per image)".format(
        [len(r) for r in got], [len(r) for r in ref])  # type: ignore[union-attr]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", action="append", metavar="PYTHON:ORT",
                        help="e.g. 3.8:1.18.0 (default {})".format(" ".join(DEFAULT_RUNTIMES)))
    parser.add_argument("model_dirs", nargs="*", metavar="MODEL_DIR")
    args = parser.parse_args()
    base = os.environ.get("ORT_COMPAT_DIR", os.path.join(tempfile.gettempdir(), "ort-compat"))
    work = tempfile.mkdtemp(prefix="ort-compat-models-")
    try:
        dirs = build_models(work) + [os.path.abspath(d) for d in args.model_dirs]
        pictures = write_images(work)
        reference = run(sys.executable, dirs, pictures)
        print("reference: Python {python}, onnxruntime {ort}".format(**reference))
        failed = 0
        for spec in args.runtime or DEFAULT_RUNTIMES:
            py_version, ort_version = spec.split(":")
            other = run(venv_for(py_version, ort_version, base), dirs, pictures)
            for d in dirs:
                ref, got = reference["models"][d], other["models"][d]  # type: ignore[index]
                ok = same(ref, got) and not isinstance(got, str)
                failed += not ok
                print("{:<6} Python {:<7} onnxruntime {:<7} {}{}".format(
                    "ok" if ok else "FAIL", other["python"], other["ort"], os.path.basename(d),
                    "" if ok else ": " + describe_difference(ref, got)))
        return 1 if failed else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
