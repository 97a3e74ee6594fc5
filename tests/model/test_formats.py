"""Detector output formats beyond GluonCV's, end to end through ONNX Runtime and the Engine.

The models are built with the `onnx` package (tests/onnx_models.py): real graphs with the I/O
shapes of Ultralytics and torchvision exports, run by the real ONNX Runtime. Their score is the
mean of the input's top-left 8x8 patch, so what the preprocessing fed them is visible.
"""
from __future__ import annotations

import numpy as np
import pytest

from connector.model import formats
from connector.model import directory as model_directory
from connector.model.contract import TensorSpec
from connector.model.engine import Engine
from connector.errors import ModelDirectoryError
from connector.model.directory import ModelMetadata
from tests import images
from tests.onnx_models import (FORMAT_BOXES, classifier, torchvision_detector,
                               ultralytics_detector)

GREY = 114 / 255  # Ultralytics' letterbox padding, scaled to 0..1


def landscape(w=640, h=480, rgb=(30, 60, 90)):
    return np.full((h, w, 3), rgb, np.uint8)


def image_box(box, top=80.0, scale=1.0, w=640, h=480):
    """FORMAT_BOXES (model pixels of a 640x640 letterboxed input) as fractions of the image."""
    x1, y1, x2, y2 = box
    return [x1 / scale / w, (y1 - top) / scale / h, x2 / scale / w, (y2 - top) / scale / h]


def model_dir(tmp_path, build, *args, yaml=None, **kwargs):
    d = tmp_path / "model"
    d.mkdir()
    build(str(d / "model.onnx"), *args, **kwargs)
    if yaml:
        (d / "model.yaml").write_text(yaml)
    return d


@pytest.mark.parametrize("kind,fmt", [("yolov8", "yolov8"), ("yolov5", "yolov5"), ("nms", "yolo-nms")])
def test_ultralytics_exports_are_recognised_letterboxed_and_decoded(tmp_path, kind, fmt):
    engine = Engine.from_model_dir(str(model_dir(tmp_path, ultralytics_detector, kind)))
    meta = engine.model.metadata
    assert engine.format.name == fmt
    assert (meta.input_name, meta.layout, meta.height, meta.width) == ("images", "NCHW", 640, 640)
    assert meta.resize == "letterbox" and meta.std == (255.0,) * 3
    rows = engine.infer(images.png(landscape()), "image/png")["prediction"]
    # Top-left patch of a letterboxed 640x480 image is the grey padding: score = 114/255.
    # The second box overlaps the first (same class): suppressed. The third is the first box
    # with another class: kept (class-wise NMS). The fourth scores below 0.25.
    assert [r[0] for r in rows] == [1, 2]
    assert [r[1] for r in rows] == pytest.approx([GREY, 0.8 * GREY], abs=1e-3)
    for row in rows:
        assert row[2:] == pytest.approx(image_box(FORMAT_BOXES[0]), abs=1e-6)


def test_letterbox_scales_a_small_portrait_image_and_maps_boxes_back(tmp_path):
    engine = Engine.from_model_dir(str(model_dir(tmp_path, ultralytics_detector, "yolov8")))
    # 240x320 (w x h): scale 2 to 480x640, padded left and right by 80 (the patch is padding).
    rows = engine.infer(images.png(landscape(w=240, h=320)))["prediction"]
    assert rows[0][1] == pytest.approx(GREY, abs=1e-3)
    x1, y1, x2, y2 = FORMAT_BOXES[0]
    assert rows[0][2:] == pytest.approx([(x1 - 80) / 2 / 240, y1 / 2 / 320, min((x2 - 80) / 2 / 240, 1.0),
                                         y2 / 2 / 320], abs=1e-6)


def test_square_image_is_not_padded_and_scaled_to_0_1(tmp_path):
    engine = Engine.from_model_dir(str(model_dir(tmp_path, ultralytics_detector, "yolov8")))
    rows = engine.infer(images.png(np.full((640, 640, 3), 200, np.uint8)))["prediction"]
    assert rows[0][1] == pytest.approx(200 / 255, abs=1e-3)
    assert rows[0][2:] == pytest.approx([v / 640 for v in FORMAT_BOXES[0]], abs=1e-6)


def test_dynamic_ultralytics_export_uses_its_default_size_or_model_yaml(tmp_path):
    d = model_dir(tmp_path, ultralytics_detector, "yolov8", dynamic=True)
    engine = Engine.from_model_dir(str(d))
    assert engine.format.name == "yolov8" and engine.model.metadata.height == 640
    (d / "model.yaml").write_text("input_size: [320, 320]\n")
    engine = Engine.from_model_dir(str(d))
    assert engine.model.metadata.height == engine.model.metadata.width == 320
    # 640x480 letterboxed to 320x320: scale 0.5, 40 rows of padding on top.
    rows = engine.infer(images.png(landscape()))["prediction"]
    assert rows[0][2:] == pytest.approx(
        [min(v, 1.0) for v in image_box(FORMAT_BOXES[0], top=40, scale=0.5)], abs=1e-6)


def test_torchvision_export_by_output_names(tmp_path):
    engine = Engine.from_model_dir(str(model_dir(tmp_path, torchvision_detector)))
    meta = engine.model.metadata
    assert engine.format.name == "torchvision"
    assert not meta.batch_axis and meta.layout == "NCHW" and meta.height == 320
    rows = engine.infer(images.png(np.full((160, 640, 3), 255, np.uint8)))["prediction"]
    # Stretched (no letterbox), 0..1: a white patch scores 1; all four rows are kept (the export
    # has already filtered and suppressed), sorted by score.
    assert [r[0] for r in rows] == [1, 1, 2, 0]
    assert [r[1] for r in rows] == pytest.approx([1.0, 0.9, 0.8, 0.05], abs=1e-3)
    assert rows[0][2:] == pytest.approx([v / 640 for v in FORMAT_BOXES[0]], abs=1e-6)


def test_declared_format_must_fit_the_outputs(tmp_path):
    d = model_dir(tmp_path, ultralytics_detector, "yolov8", yaml="format: gluoncv\n")
    with pytest.raises(ModelDirectoryError, match=r"format: gluoncv \(3 outputs\) but the model"):
        Engine.from_model_dir(str(d))
    (d / "model.yaml").write_text("format: yolo-nms\n")
    with pytest.raises(ModelDirectoryError, match=r"output is output0 \(1, 7, 8\); a yolo-nms output is \(1, N, 6\)"):
        Engine.from_model_dir(str(d))


def test_a_classifier_is_refused_at_load_saying_what_it_returns(tmp_path):
    with pytest.raises(ModelDirectoryError) as e:
        Engine.from_model_dir(str(model_dir(tmp_path, classifier)))
    assert "1 output of shape probs (1, 1000); a detector has ids, scores and boxes" in str(e.value)


def test_model_yaml_overrides_the_format_defaults(tmp_path):
    d = model_dir(tmp_path, ultralytics_detector, "yolov8",
                  yaml="resize: stretch\nstd: 1\nscore_threshold: 0.5\n")
    engine = Engine.from_model_dir(str(d))
    rows = engine.infer(images.png(landscape(rgb=(0, 0, 0))))["prediction"]
    assert rows == []  # black, unscaled: score 0 < 0.5
    rows = engine.infer(images.png(landscape(rgb=(1, 1, 1))))["prediction"]
    assert [r[0] for r in rows] == [1, 2] and rows[0][1] == pytest.approx(1.0)  # 0..255 input
    assert rows[0][2:] == pytest.approx([v / 640 for v in FORMAT_BOXES[0]])  # stretched: no pad


# ---- recognition and NMS without a runtime -----------------------------------------------------

def spec(shape, name="out"):
    return TensorSpec(name, shape, "float32")


@pytest.mark.parametrize("shapes,expected", [
    ([(1, 84, 8400)], "yolov8"),
    ([(None, 84, None)], "yolov8"),
    ([(1, 25200, 85)], "yolov5"),
    ([(1, 6300, 6)], "yolov5"),  # one class, thousands of anchors
    ([(1, 300, 6)], "yolo-nms"),
    ([(None, None, 6)], "yolo-nms"),
    ([(1, 100, 1), (1, 100, 1), (1, 100, 4)], "gluoncv"),
])
def test_recognised_from_output_shapes(shapes, expected):
    outputs = [spec(s, "o{}".format(i)) for i, s in enumerate(shapes)]
    assert formats.recognise(outputs, ModelMetadata(), "m.onnx").name == expected


@pytest.mark.parametrize("shapes", [[(1, 1000)], [(1, 3, 8)], [(1, 10, 4), (1, 10)], []])
def test_unknown_outputs_are_refused(shapes):
    with pytest.raises(ModelDirectoryError, match="a detector has ids, scores and boxes"):
        formats.recognise([spec(s) for s in shapes], ModelMetadata(), "m.onnx")


def test_model_yaml_accepts_exactly_the_known_formats():
    # model.directory cannot import formats (formats imports it), so it repeats the names.
    assert model_directory.FORMATS == tuple(formats.FORMATS)


def test_nms_is_greedy_and_class_wise():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [20, 20, 30, 30],
                      [5, 0, 15, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    classes = np.array([0, 0, 1, 0, 0])
    # 1 overlaps 0 (IoU 0.68): gone; 2 is another class; 4 overlaps 0 by 1/3: kept at 0.45.
    assert formats.nms(boxes, scores, classes, 0.45).tolist() == [0, 2, 3, 4]
    assert formats.nms(boxes, scores, classes, 0.3).tolist() == [0, 2, 3]
    assert formats.nms(boxes, scores, classes, 0.45, max_keep=2).tolist() == [0, 2]
    assert formats.nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.45).tolist() == []


def test_raw_yolo_rows_with_non_finite_values_are_dropped():
    meta = ModelMetadata(format="yolov8")
    out = np.zeros((1, 4 + 2, 3), np.float32)
    out[0, :, 0] = [50, 50, 20, 20, 0.9, 0]
    out[0, :, 1] = [np.nan, 50, 20, 20, 0.8, 0]
    out[0, :, 2] = [150, 150, 20, np.inf, 0, 0.7]
    classes, scores, boxes = formats.decode_yolov8([out], meta)
    assert classes.tolist() == [0] and scores.tolist() == pytest.approx([0.9])
    assert boxes.tolist() == [[40, 40, 60, 60]]


# ---- served ------------------------------------------------------------------------------------

@pytest.mark.parametrize("build,expected", [
    (lambda p: ultralytics_detector(p, "yolov8"), [1, 2]),
    (lambda p: ultralytics_detector(p, "yolov5"), [1, 2]),
    (lambda p: ultralytics_detector(p, "nms"), [1, 2]),
    (torchvision_detector, [1, 1, 2, 0]),
], ids=["yolov8", "yolov5", "yolo-nms", "torchvision"])
def test_each_format_answers_the_same_document_through_the_service(tmp_path, sdk_env, build, expected):
    import ast
    import json
    import sys

    from tests.service_process import ROOT, start_serve
    sys.path.insert(0, str(ROOT / "ml_sdk"))
    import greengrass_machine_learning_sdk as ml

    d = tmp_path / "model"
    d.mkdir()
    build(str(d / "model.onnx"))
    (d / "labels.txt").write_text("circle\nsquare\ntriangle\n")
    proc, info, env = start_serve(tmp_path, d)
    try:
        sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
        client = ml.client("inference")
        resp = client.invoke_inference_service(AlgoType="object-detection",
                                               ServiceName="objectDetection",
                                               ContentType="image/jpeg",
                                               Body=images.jpeg(landscape()))
        text = resp["Body"].read().decode("utf-8")
        doc = json.loads(text)
        assert doc == ast.literal_eval(text) and list(doc) == ["prediction"]
        assert [r[0] for r in doc["prediction"]] == expected
        for cls, score, *box in doc["prediction"]:
            assert type(cls) is int and 0 <= score <= 1 and all(0 <= v <= 1 for v in box)
        # A bad request is refused and the next one is served.
        with pytest.raises(ml.GreengrassInferenceException):
            client.invoke_inference_service(AlgoType="object-detection",
                                            ServiceName="objectDetection",
                                            ContentType="image/png", Body=b"not an image")
        again = client.invoke_inference_service(AlgoType="object-detection",
                                                ServiceName="objectDetection",
                                                ContentType="image/png", Body=images.png(landscape()))
        assert [r[0] for r in json.loads(again["Body"].read())["prediction"]] == expected
    finally:
        assert proc.stop() == 0, proc.log()
