import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from connector.demos import bundled_models
from tests import images
from tests.onnx_models import red_detector

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "connector", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd or ROOT)


def test_models_lists_bundled_models_with_absolute_paths():
    out = cli("models")
    assert out.returncode == 0, out.stderr
    lines = [line.split(" ", 1) for line in out.stdout.splitlines()]
    assert [name for name, _ in lines] == ["demo-ssd", "demo-ssd-neo", "demo-yolov3", "demo-yolov3-neo"]
    for name, path in lines:
        assert os.path.isabs(path) and os.path.isdir(path)
        model_file = "compiled.so" if name.endswith("-neo") else "model.onnx"  # Neo/DLR or ONNX
        assert os.path.isfile(os.path.join(path, model_file))
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


# ---- check-model ---------------------------------------------------------------------------------

def test_check_model_on_a_bundled_onnx_model():
    out = cli("check-model", bundled_models()["demo-ssd"])
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "onnx model: model.onnx" in text and "onnxruntime on cpu" in text
    assert "output format:   gluoncv (recognised from the outputs)" in text
    assert "input:           data (1, 512, 512, 3) NHWC float32 RGB (from model.onnx)" in text
    assert "outputs:         ids (1, 100, 1), scores (1, 100, 1), bboxes (1, 100, 4)" in text
    assert "labels:          3 (circle, square, triangle)" in text
    assert "blank image:     0 detection(s)" in text
    assert "ms image to answer" in text and "ms in the runtime (median of 10)" in text
    assert text.rstrip().endswith("OK: the connector can serve this model")
    assert out.stderr == ""


def test_check_model_on_a_neo_nchw_directory(tmp_path):
    from connector.model.backends import dlr_runtime
    if dlr_runtime.find_dlr_package() is None:
        import pytest
        pytest.skip("needs the dlr package")
    from tests.dlr_fixture.build import build_dlr_model
    d = build_dlr_model(tmp_path / "neo", layout="NCHW", input_size=(416, 416))
    (Path(d) / "model-shapes.json").write_text("[]")
    out = cli("check-model", d, "--runs", "3")
    assert out.returncode == 0, out.stderr
    assert "dlr model: model.json, model.meta, model.params, model.so" in out.stdout
    assert ("input:           data (1, 3, 416, 416) NCHW float32 RGB (from model.json and "
            "model.meta)") in out.stdout
    assert "(median of 3)" in out.stdout


def test_check_model_on_an_ultralytics_export(tmp_path):
    from tests.onnx_models import ultralytics_detector
    ultralytics_detector(str(tmp_path / "best.onnx"), "yolov8")
    out = cli("check-model", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "output format:   yolov8 (recognised from the outputs)" in out.stdout
    assert ("input:           images (1, 3, 640, 640) NCHW float32 RGB, mean [0.0, 0.0, 0.0] "
            "std [255.0, 255.0, 255.0], letterboxed (from best.onnx)") in out.stdout


def bad_dirs(tmp_path):
    from tests.onnx_models import classifier
    cls = tmp_path / "classifier"
    cls.mkdir()
    classifier(str(cls / "model.onnx"))
    wrong = tmp_path / "wrong-yaml"
    wrong.mkdir()
    red_detector(str(wrong / "model.onnx"))
    (wrong / "model.yaml").write_text("layout: NCHW\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"\x08\x07not a protobuf" * 10)
    return [(tmp_path / "absent", "does not exist"),
            (cls, "1 output of shape probs (1, 1000); a detector has ids, scores and boxes"),
            (wrong, "model.yaml says layout: NCHW but the model (model.onnx) takes 'data' "
                    "(1, 512, 512, 3) float32, i.e. layout NHWC"),
            (broken, "ONNX Runtime cannot load")]


def test_check_model_bad_directories_are_one_line_and_non_zero(tmp_path):
    for path, words in bad_dirs(tmp_path):
        out = cli("check-model", str(path))
        assert out.returncode == 1, (path, out.stdout, out.stderr)
        assert out.stdout == ""
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], out.stderr


@pytest.mark.parametrize("machine, expected", [
    ("x86_64", ["demo-ssd", "demo-ssd-neo", "demo-yolov3", "demo-yolov3-neo"]),
    ("aarch64", ["demo-ssd", "demo-ssd-neo-aarch64", "demo-yolov3"]),
    ("armv7l", ["demo-ssd", "demo-ssd-neo-armv7", "demo-yolov3"]),
])
def test_bundled_neo_demos_are_offered_only_on_the_cpu_they_were_compiled_for(machine, expected):
    from connector.demos import model_arch
    offered = bundled_models(machine)
    assert list(offered) == expected
    for name in (n for n in expected if model_arch(n)):  # its library is for that CPU (ELF e_machine)
        with open(os.path.join(offered[name], "compiled.so"), "rb") as f:
            header = f.read(20)
        assert header[18] == {"x86_64": 62, "aarch64": 183, "armv7l": 40}[machine], name


def test_a_neo_demo_for_another_cpu_is_named_as_such(monkeypatch):
    from connector.demos import model_path
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    with pytest.raises(KeyError, match="compiled for armv7, and this machine is x86_64"):
        model_path("demo-ssd-neo-armv7")


MIGRATE_RUN_MODULES = ("plan", "render", "group", "topics", "feedback_map", "writer", "pointers")


def test_building_the_parser_leaves_migrate_v1s_planning_unimported():
    """Every `python -m connector` command (serve on each start) builds the whole parser: the
    migrate-v1 subcommand's arguments need only its command and source modules, never what plans,
    renders and writes a migration."""
    probe = ("import sys, connector.cli; connector.cli.build_parser(); "
             "print(' '.join(sorted(m for m in sys.modules if m.startswith('connector.'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert "connector.tools.migrate.command" in loaded
    assert not {"connector.tools.migrate." + m for m in MIGRATE_RUN_MODULES} & loaded, sorted(loaded)
    assert "connector.feedback.config" not in loaded


def test_migrate_v1_help_still_states_the_source_cap():
    out = cli("migrate-v1", "--help")
    assert out.returncode == 0 and "a regular file of at most 4 MiB" in out.stdout, out.stdout
