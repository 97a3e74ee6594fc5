"""The bundled demo detectors really detect: COCO mAP@0.5 >= 0.90 on pictures they never saw.

Each model directory in connector/demos is run through the engine's own path (JPEG/PNG bytes in,
prediction document out) on a fresh synthetic test set in the sizes cameras send, and scored with
pycocotools against the generator's ground truth.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from connector.model.engine import Engine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import shapes_dataset as sd  # noqa: E402

MODELS = os.path.join(ROOT, "connector", "demos")
SIZES = ((512, 512), (640, 480), (1280, 720))
IMAGES = 90
SEED = 424242  # training rendered seeds [1, i] and evaluated [7778, i]: these pictures are new


@pytest.fixture(scope="module")
def test_set():
    samples = []
    for i in range(IMAGES):
        w, h = SIZES[i % len(SIZES)]
        rgb, boxes = sd.make_sample(np.random.default_rng([SEED, i]), w, h)
        data, kind = sd.encode_mixed(rgb, i)
        samples.append((data, kind, w, h, boxes))
    return samples


def _ap50(gt: COCO, results: list, image_ids: list) -> float:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])  # AP at IoU 0.5, all areas, 100 detections


def _has_dlr() -> bool:
    from connector.model.backends import dlr_runtime
    return dlr_runtime.find_dlr_package() is not None


NEEDS_DLR = pytest.mark.skipif(not _has_dlr(), reason="needs the dlr package (extra 'dlr')")
ONNX_MODELS = ["demo-ssd", "demo-yolov3"]
# The same detectors compiled by TVM into SageMaker Neo directories, run by the real libdlr.so
# (scripts/tools/make_test_models.sh --demos; their NMS is the fixed-shape one GluonCV uses).
NEO_MODELS = [pytest.param(n + "-neo", marks=NEEDS_DLR) for n in ONNX_MODELS]
_predictions: dict = {}


def _predict(name: str, test_set) -> list:
    """The prediction documents of one bundled model on the test set, through the engine (cached)."""
    if name not in _predictions:
        engine = Engine.from_model_dir(os.path.join(MODELS, name))
        try:
            assert engine.model.labels == sd.CLASSES
            assert engine.backend.name == ("dlr" if name.endswith("-neo") else "onnxruntime")
            _predictions[name] = [engine.infer(data, kind)["prediction"] for data, kind, *_ in test_set]
        finally:
            engine.close()
    return _predictions[name]


def _map50(docs: list, test_set) -> tuple:
    results = []
    for image_id, (doc, (_, _, w, h, _)) in enumerate(zip(docs, test_set), 1):
        rows = [[c, s, x0 * w, y0 * h, x1 * w, y1 * h] for c, s, x0, y0, x1, y1 in doc]
        results += sd.coco_results(image_id, rows)
    assert results, "no detections at all"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = sd.coco_ground_truth((w, h, boxes) for _, _, w, h, boxes in test_set)
        gt.createIndex()
    ap = _ap50(gt, results, list(range(1, IMAGES + 1)))
    per_size = {"{}x{}".format(*s): round(_ap50(gt, results, [i + 1 for i in range(IMAGES) if SIZES[i % 3] == s]), 3)
                for s in SIZES}
    return ap, per_size


@pytest.mark.parametrize("name", ONNX_MODELS + NEO_MODELS)
def test_demo_model_finds_the_shapes(name, test_set):
    ap, per_size = _map50(_predict(name, test_set), test_set)
    assert ap >= 0.90, "{}: mAP@0.5 {:.3f} (per image size {})".format(name, ap, per_size)


@NEEDS_DLR
@pytest.mark.parametrize("name", ONNX_MODELS)
def test_neo_demo_answers_as_the_onnx_demo(name, test_set):
    """DLR running the Neo compile and ONNX Runtime running the ONNX file: the same detections.

    Rows are compared as sets: detections whose scores tie may come out in either order.
    """
    onnx_docs, neo_docs = _predict(name, test_set), _predict(name + "-neo", test_set)
    rows = 0
    for i, (a, b) in enumerate(zip(onnx_docs, neo_docs)):
        assert len(a) == len(b), "image {}: ONNX Runtime found {}, DLR {}".format(i, len(a), len(b))
        unmatched = [r for r in a if not any(q[0] == r[0] and np.allclose(q[1:], r[1:], atol=1e-4) for q in b)]
        assert not unmatched, "image {}: ONNX Runtime rows without a DLR twin: {}".format(i, unmatched[:3])
        rows += len(a)
    assert rows > IMAGES, "too few detections to compare ({})".format(rows)
    assert _map50(onnx_docs, test_set)[0] == pytest.approx(_map50(neo_docs, test_set)[0], abs=1e-3)


LARGE_SIZES = ((1920, 1080), (2560, 1440), (3840, 2160))  # decoded at 1/2, 1/2 and 1/4 for 512x512
LARGE_IMAGES = 24


def _large_map50(engine: Engine, samples: list) -> float:
    results = []
    for image_id, (data, kind, w, h, _) in enumerate(samples, 1):
        doc = engine.infer(data, kind)["prediction"]
        results += sd.coco_results(image_id, [[c, s, x0 * w, y0 * h, x1 * w, y1 * h]
                                              for c, s, x0, y0, x1, y1 in doc])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = sd.coco_ground_truth((w, h, boxes) for _, _, w, h, boxes in samples)
        gt.createIndex()
    return _ap50(gt, results, list(range(1, len(samples) + 1)))


@pytest.fixture(scope="module")
def large_set():
    """Camera-size JPEGs (rendering them is most of this test's time, so both models share them)."""
    samples = []
    for i in range(LARGE_IMAGES):
        w, h = LARGE_SIZES[i % len(LARGE_SIZES)]
        rgb, boxes = sd.make_sample(np.random.default_rng([SEED, 1000 + i]), w, h)
        data, kind = sd.encode_mixed(rgb, i * 4)  # index % 4 == 0: all JPEG
        assert kind == "image/jpeg"
        samples.append((data, kind, w, h, boxes))
    return samples


@pytest.mark.parametrize("name", ONNX_MODELS)
def test_reduced_decoding_keeps_the_map_on_large_pictures(name, large_set):
    """Camera-size JPEGs decoded reduced (connector.model.preprocess.reduction) score as well as decoded
    whole, within 0.005 (measured on these 24: demo-ssd 0.9303 reduced vs 0.9310 whole,
    demo-yolov3 0.9665 both)."""
    engine = Engine.from_model_dir(os.path.join(MODELS, name))
    try:
        engine.reduced_decoding = False
        whole = _large_map50(engine, large_set)
        engine.reduced_decoding = True
        reduced = _large_map50(engine, large_set)
    finally:
        engine.close()
    assert reduced >= 0.90, "{}: mAP@0.5 {:.3f} reduced ({:.3f} whole)".format(name, reduced, whole)
    assert reduced >= whole - 0.005, "{}: mAP@0.5 {:.3f} reduced < {:.3f} whole".format(name, reduced, whole)
