import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from connector.models import bundled_models
from tests import images
from tests.onnx_models import red_detector

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "connector", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd or ROOT)


def test_models_lists_bundled_models_with_absolute_paths():
    out = cli("models")
    assert out.returncode == 0, out.stderr
    lines = [line.split(" ", 1) for line in out.stdout.splitlines()]
    assert [name for name, _ in lines] == ["demo-ssd", "demo-yolov3"]
    for name, path in lines:
        assert os.path.isabs(path) and os.path.isdir(path)
        assert os.path.isfile(os.path.join(path, "model.onnx"))
    assert dict(lines) == bundled_models()


def test_infer_reports_each_image_and_keeps_going(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    red_detector(str(model / "model.onnx"))
    good = tmp_path / "red.png"
    good.write_bytes(images.png(np.full((240, 320, 3), (255, 0, 0), np.uint8)))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(images.jpeg()[:700])
    gif = tmp_path / "anim.gif"
    gif.write_bytes(b"GIF89a" + b"\x00" * 50)
    missing = tmp_path / "missing.jpg"
    good2 = tmp_path / "scene.jpg"
    good2.write_bytes(images.jpeg())
    draw = tmp_path / "drawn"
    out = cli("infer", "--model-dir", str(model), "--draw", str(draw),
              str(good), str(broken), str(gif), str(missing), str(good2))
    assert out.returncode == 1  # some images failed
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(good), str(broken), str(gif), str(missing), str(good2)]
    assert lines[0]["prediction"][0][0] == 0 and lines[0]["prediction"][0][1] > 0.99
    assert "truncated" in lines[1]["error"]
    assert "GIF" in lines[2]["error"]
    assert "No such file" in lines[3]["error"]
    assert lines[4]["prediction"]
    assert "truncated" in out.stderr and str(broken) in out.stderr
    drawn = cv2.imread(str(draw / "red.png"))
    assert drawn.shape == (240, 320, 3)
    original = cv2.cvtColor(cv2.imdecode(np.frombuffer(good.read_bytes(), np.uint8), 1), cv2.COLOR_BGR2RGB)
    assert (drawn != cv2.cvtColor(original, cv2.COLOR_RGB2BGR)).any()  # something was drawn
    assert sorted(p.name for p in draw.iterdir()) == ["red.png", "scene.jpg"]


def test_infer_bad_model_dir_is_one_clear_error(tmp_path):
    out = cli("infer", "--model-dir", str(tmp_path / "nope"), str(tmp_path / "x.jpg"))
    assert out.returncode == 2
    assert "does not exist" in out.stderr and "Traceback" not in out.stderr
