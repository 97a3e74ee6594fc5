"""Real third-party artefacts (tests/models, made by scripts/tools/make_test_models.sh) on real runtimes.

* Neo directories TVM compiled from GluonCV exports run on the real libdlr.so (dlr 1.6.0) and give
  bit-for-bit what TVM's own graph executor gave on the same files and picture: recorded at compile
  time in reference.npz, and re-run live when the TVM tool venv (.tools/tvm) is present.
* The GluonCV ONNX export and the Neo compile of the same export agree on the best detection
  (ONNX Runtime vs DLR), the YOLOv3 one through the ORT constant-folding retry.
* Ultralytics YOLOv8/YOLO11/YOLOv5u ONNX exports are recognised, letterboxed, and the raw export
  decoded here answers as the same network exported with Ultralytics' own NMS.
* torchvision SSD/RetinaNet ONNX exports give on ONNX Runtime the detections torchvision's eager
  forward gave at export time.
* Every artefact directory is what its MANIFEST says, and the Neo metadata is in the format DLR reads.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from connector.model.engine import Engine
from tests import images

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "tests", "models")
sys.path.insert(0, os.path.join(ROOT, "scripts", "tools"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from pattern import pattern_image  # noqa: E402
import shapes_dataset as sd  # noqa: E402

TVM_PYTHON = os.path.join(ROOT, ".tools", "tvm", "bin", "python")
ELF_MACHINE = {"aarch64": (183, 2), "armv7": (40, 1)}  # e_machine, EI_CLASS (2 = 64-bit)


def _dirs(pred) -> list:
    return sorted(n for n in os.listdir(MODELS) if os.path.isdir(os.path.join(MODELS, n)) and pred(n))


ALL = _dirs(lambda n: True)
NEO_X86 = _dirs(lambda n: n.startswith("neo-") and not n.endswith(("-aarch64", "-armv7")))
NEO_CROSS = _dirs(lambda n: n.endswith(("-aarch64", "-armv7")))
ONNX = _dirs(lambda n: n.endswith("-onnx"))  # GluonCV exports through mx.onnx


def _dlr():
    from connector.model.backends import dlr_runtime
    if dlr_runtime.find_dlr_package() is None:
        pytest.skip("needs the dlr package (extra 'dlr')")
    from connector.model.backends.dlr_backend import import_dlr
    return import_dlr()


def _input_shape(neo_dir: str) -> list:
    with open(os.path.join(neo_dir, "compiled.meta")) as f:
        return json.load(f)["Model"]["Inputs"][0]["shape"]


def _run_dlr(neo_dir: str, x: np.ndarray) -> list:
    model = _dlr().DLRModel(neo_dir, "cpu", 0)
    return model.run({"data": x})


def test_the_artefact_set_covers_layouts_sizes_and_cpus():
    shapes = {tuple(_input_shape(os.path.join(MODELS, n))) for n in NEO_X86}
    assert {s[1] for s in shapes if s[3] == 3} >= {300, 416} and {s[2] for s in shapes if s[1] == 3} >= {320, 512}
    assert {n.rsplit("-", 1)[1] for n in NEO_CROSS} == {"aarch64", "armv7"}
    assert {"gluoncv-ssd-300-onnx", "gluoncv-yolo3-416-onnx"} <= set(ONNX)
    assert {n.split("-")[1] for n in ALL if n.startswith("ultralytics-")} == {"yolov8n", "yolo11n", "yolov5nu"}
    assert {n.split("-")[1] for n in ALL if n.startswith("torchvision-")} == {"ssd", "retinanet"}
    total = sum(os.path.getsize(os.path.join(MODELS, d, f)) for d in ALL for f in os.listdir(os.path.join(MODELS, d)))
    assert total < 14 << 20, "committed test artefacts grew to {:.1f} MB".format(total / 2**20)


@pytest.mark.parametrize("name", ALL)
def test_artefact_directory_is_what_its_manifest_says(name):
    d = os.path.join(MODELS, name)
    with open(os.path.join(d, "MANIFEST")) as f:
        text = f.read()
    assert text.startswith("made by: ") and "\ntools: " in text and "\nseed: " in text
    listed = {}
    for line in text.split("files (sha256, bytes, name):\n", 1)[1].splitlines():
        digest, size, fname = line.split()
        listed[fname] = (digest, int(size))
    present = sorted(f for f in os.listdir(d) if f != "MANIFEST")
    assert sorted(listed) == present
    for fname, (digest, size) in listed.items():
        with open(os.path.join(d, fname), "rb") as f:
            data = f.read()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (digest, size), fname
        assert len(data) < 5 << 20, "{} is over 5 MB".format(fname)


@pytest.mark.parametrize("name", NEO_X86 + NEO_CROSS)
def test_neo_metadata_is_in_the_format_dlr_reads_and_agrees_with_the_graph(name):
    d = os.path.join(MODELS, name)
    with open(os.path.join(d, "compiled.meta")) as f:
        meta = json.load(f)["Model"]
    with open(os.path.join(d, "compiled_model.json")) as f:
        graph = json.load(f)
    data = graph["nodes"][graph["arg_nodes"][0]]
    assert data["name"] == meta["Inputs"][0]["name"] == "data"
    shapes = graph["attrs"]["shape"][1]
    assert shapes[graph["node_row_ptr"][graph["arg_nodes"][0]]] == meta["Inputs"][0]["shape"]
    assert [o["name"] for o in meta["Outputs"]] == ["ids", "scores", "bboxes"]
    assert len(graph["heads"]) == 3
    with open(os.path.join(d, "model-shapes.json")) as f:
        assert json.load(f) == [{"data": meta["Inputs"][0]["shape"]}]


@pytest.mark.parametrize("name", NEO_X86)
def test_dlr_runs_the_neo_compile_bit_identical_to_tvm(name):
    d = os.path.join(MODELS, name)
    outs = _run_dlr(d, pattern_image(_input_shape(d)))
    ref = np.load(os.path.join(d, "reference.npz"))
    assert len(outs) == len(ref.files) == 3
    for i, out in enumerate(outs):
        expected = ref["output_{}".format(i)]
        assert out.shape == expected.shape and out.dtype == expected.dtype
        assert np.array_equal(out, expected), "output {} differs by up to {}".format(i, np.abs(out - expected).max())
    ids, scores, boxes = outs
    valid = ids[0, :, 0] >= 0
    assert valid.any() and np.isfinite(boxes).all()
    assert ((scores[0, valid] > 0) & (scores[0, valid] <= 1)).all()


@pytest.mark.skipif(not os.path.exists(TVM_PYTHON), reason="TVM tool venv absent (scripts/tools/make-venv.sh tvm)")
@pytest.mark.parametrize("name", NEO_X86)
def test_dlr_matches_a_live_tvm_graph_executor(name, tmp_path):
    d = os.path.join(MODELS, name)
    out = tmp_path / "tvm.npz"
    code = ("import sys, numpy as np; sys.path.insert(0, {tools!r}); import tvm_compile as t; "
            "np.savez({out!r}, **t.reference_outputs({d!r}, {shape!r}))").format(
        tools=os.path.join(ROOT, "scripts", "tools"), out=str(out), d=d, shape=_input_shape(d))
    subprocess.run([TVM_PYTHON, "-c", code], check=True, capture_output=True, timeout=300)
    live = np.load(str(out))
    for i, o in enumerate(_run_dlr(d, pattern_image(_input_shape(d)))):
        assert np.array_equal(o, live["output_{}".format(i)])


@pytest.mark.parametrize("name", NEO_CROSS)
def test_cross_compiled_libraries_are_for_their_cpu(name):
    with open(os.path.join(MODELS, name, "compiled.so"), "rb") as f:
        head = f.read(20)
    machine, klass = ELF_MACHINE[name.rsplit("-", 1)[1]]
    assert head[:4] == b"\x7fELF" and head[4] == klass
    assert int.from_bytes(head[18:20], "little") == machine


@pytest.mark.parametrize("onnx_name, neo_name", [("gluoncv-ssd-300-onnx", "neo-ssd-300-nhwc"),
                                                 ("gluoncv-yolo3-416-onnx", "neo-yolo3-416-nhwc")])
def test_onnx_export_and_neo_compile_of_one_gluoncv_export_agree(onnx_name, neo_name):
    """Same export, two routes: mx.onnx -> ONNX Runtime and TVM -> DLR.

    mx.onnx turns GluonCV's per-class box_nms into a class-blind ONNX NonMaxSuppression (it warns
    so), so the lists may differ after the first row; the best detection survives any NMS.
    """
    neo = os.path.join(MODELS, neo_name)
    x = pattern_image(_input_shape(neo))
    dlr_out = _run_dlr(neo, x)
    engine = Engine.from_model_dir(os.path.join(MODELS, onnx_name))  # the YOLOv3 one needs the ORT retry
    try:
        ort_out = engine.backend.run(x)
    finally:
        engine.close()
    best_dlr = np.concatenate([o[0, 0] for o in dlr_out])
    best_ort = np.concatenate([o[0, 0] for o in ort_out])
    assert best_dlr[0] >= 0 and best_dlr[0] == best_ort[0]
    np.testing.assert_allclose(best_ort[1:], best_dlr[1:], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", NEO_X86 + ONNX)
def test_each_artefact_serves_a_picture_through_the_engine(name):
    if name.startswith("neo-"):
        _dlr()
    rgb, _ = sd.make_sample(np.random.default_rng([5, 0]), 640, 480)
    engine = Engine.from_model_dir(os.path.join(MODELS, name))
    try:
        doc = engine.infer(images.png(rgb), "image/png")
    finally:
        engine.close()
    rows = doc["prediction"]
    assert rows, "random-weight detectors still answer boxes"
    for c, s, x0, y0, x1, y1 in rows:
        assert c in (0, 1, 2) and 0 < s <= 1 and 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)


# ---- Ultralytics (scripts/tools/ultralytics_export.py) -------------------------------------------

ULTRALYTICS = _dirs(lambda n: n.startswith("ultralytics-"))
PICTURE_SIZES = ((640, 480), (480, 640), (512, 512), (1280, 720))  # letterboxing both ways


@pytest.mark.parametrize("name", ULTRALYTICS)
def test_ultralytics_export_is_recognised_and_letterboxed(name):
    engine = Engine.from_model_dir(os.path.join(MODELS, name))
    try:
        assert engine.format.name == ("yolo-nms" if name.endswith("-nms") else "yolov8")
        meta = engine.model.metadata
        assert (meta.layout, meta.height, meta.width, meta.resize) == ("NCHW", 256, 256, "letterbox")
        assert engine.model.labels == tuple(sd.CLASSES)
    finally:
        engine.close()


@pytest.mark.parametrize("arch", sorted({n.split("-")[1] for n in ULTRALYTICS if n.endswith("-nms")}))
def test_ultralytics_raw_export_decoded_here_answers_as_its_nms_export(arch):
    """One network exported twice: decoding + NMS on our side (raw) vs Ultralytics' in-graph NMS."""
    raw = Engine.from_model_dir(os.path.join(MODELS, "ultralytics-{}-256-raw".format(arch)))
    nms = Engine.from_model_dir(os.path.join(MODELS, "ultralytics-{}-256-nms".format(arch)))
    rows = 0
    try:
        for i in range(12):
            w, h = PICTURE_SIZES[i % len(PICTURE_SIZES)]
            data = images.png(sd.make_sample(np.random.default_rng([5, i]), w, h)[0])
            a, b = raw.infer(data, "image/png")["prediction"], nms.infer(data, "image/png")["prediction"]
            assert len(a) == len(b), "picture {}: raw {} rows, nms {} rows".format(i, len(a), len(b))
            lonely = [r for r in a if not any(q[0] == r[0] and np.allclose(q[1:], r[1:], atol=1e-4) for q in b)]
            assert not lonely, "picture {}: {}".format(i, lonely[:3])
            rows += len(a)
    finally:
        raw.close()
        nms.close()
    assert rows >= 20, "the exports should find something ({} rows)".format(rows)


# ---- torchvision (scripts/tools/torchvision_export.py) -------------------------------------------

TORCHVISION = _dirs(lambda n: n.startswith("torchvision-"))


def _rows(boxes, scores, labels) -> np.ndarray:
    return np.concatenate([np.asarray(labels, np.float64)[:, None], np.asarray(scores, np.float64)[:, None],
                           np.asarray(boxes, np.float64)], axis=1)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_export_on_onnx_runtime_gives_torchvision_eager_detections(name):
    """ONNX Runtime (through the connector's backend) vs torchvision's own eager forward at export."""
    engine = Engine.from_model_dir(os.path.join(MODELS, name))
    try:
        assert engine.format.name == "torchvision"
        meta = engine.model.metadata
        assert (meta.height, meta.width) == (320, 320)
        out = dict(zip(("boxes", "scores", "labels"), engine.backend.run(pattern_image((1, 3, 320, 320))[0] / 255.0)))
    finally:
        engine.close()
    ref = np.load(os.path.join(MODELS, name, "reference.npz"))
    got, want = _rows(out["boxes"], out["scores"], out["labels"]), _rows(ref["boxes"], ref["scores"], ref["labels"])
    assert len(want) >= 20 and len(got) == len(want)
    assert (want[:, 0] >= 1).all(), "label 0 is the background"
    lonely = [r for r in got if not (np.abs(want - r).max(axis=1) < 1e-3).any()]  # ties may swap places
    assert not lonely, lonely[:3]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_export_serves_pictures(name):
    engine = Engine.from_model_dir(os.path.join(MODELS, name))
    try:
        for i, (w, h) in enumerate(PICTURE_SIZES):
            rows = engine.infer(images.jpeg(sd.make_sample(np.random.default_rng([6, i]), w, h)[0]), "image/jpeg")["prediction"]
            assert rows and all(c in (1, 2, 3) and 0 < s <= 1 and 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1
                                for c, s, x0, y0, x1, y1 in rows)
    finally:
        engine.close()
