"""The bundled demo detectors really detect: COCO mAP@0.5 >= 0.90 on pictures they never saw.

Each model directory in connector/models is run through the engine's own path (JPEG/PNG bytes in,
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

from connector.engine import Engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import shapes_dataset as sd  # noqa: E402

MODELS = os.path.join(ROOT, "connector", "models")
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


@pytest.mark.parametrize("name", ["demo-ssd", "demo-yolov3"])
def test_demo_model_finds_the_shapes(name, test_set):
    engine = Engine.from_model_dir(os.path.join(MODELS, name))
    try:
        assert engine.model.labels == sd.CLASSES
        results = []
        for image_id, (data, kind, w, h, _) in enumerate(test_set, 1):
            doc = engine.infer(data, kind)
            rows = [[c, s, x0 * w, y0 * h, x1 * w, y1 * h] for c, s, x0, y0, x1, y1 in doc["prediction"]]
            results += sd.coco_results(image_id, rows)
    finally:
        engine.close()
    assert results, "no detections at all"

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = sd.coco_ground_truth((w, h, boxes) for _, _, w, h, boxes in test_set)
        gt.createIndex()
    ap = _ap50(gt, results, list(range(1, IMAGES + 1)))
    per_size = {"{}x{}".format(*s): round(_ap50(gt, results, [i + 1 for i in range(IMAGES) if SIZES[i % 3] == s]), 3)
                for s in SIZES}
    assert ap >= 0.90, "{}: mAP@0.5 {:.3f} (per image size {})".format(name, ap, per_size)
