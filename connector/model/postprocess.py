"""Decoded detections to the service's prediction document (SPEC section 3)."""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, List

import numpy as np

from .formats import Detections
from .preprocess import Frame

log = logging.getLogger(__name__)

Prediction = List[Any]  # [class:int, score, xmin, ymin, xmax, ymax]


def to_predictions(detections: Detections, frame: Frame) -> List[Prediction]:
    """Rows of [class, score, xmin, ymin, xmax, ymax], corners as fractions of the image clipped
    to 0..1, sorted by score (highest first). Rows with non-finite values, and boxes with no area
    inside the image, are dropped and counted in the debug log."""
    classes, scores, boxes = detections
    finite = np.isfinite(scores) & np.isfinite(boxes).all(axis=1)
    boxes = np.clip(frame.to_fractions(boxes[finite]), 0.0, 1.0)
    classes, scores = classes[finite], scores[finite]
    solid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not finite.all() or not solid.all():
        log.debug("dropped %d detection(s) with non-finite values and %d with an empty box",
                  int((~finite).sum()), int((~solid).sum()))
    classes, scores, boxes = classes[solid], scores[solid], boxes[solid]
    order = np.argsort(-scores, kind="stable")
    return [[int(classes[i]), float(np.clip(scores[i], 0.0, 1.0))] + [float(v) for v in boxes[i]]
            for i in order]


def prediction_document(predictions: List[Prediction]) -> Dict[str, List[Prediction]]:
    return {"prediction": predictions}


def render(document: Dict[str, Any]) -> str:
    """The document as text that is valid JSON and a valid Python literal (user code calls eval).

    The two syntaxes differ only for NaN/Infinity, true/false/null; to_predictions removes
    non-finite values and the document holds no booleans or None, and allow_nan=False makes sure.
    """
    return json.dumps(document, allow_nan=False, separators=(", ", ": "))
