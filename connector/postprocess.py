"""Raw detector outputs to the service's prediction document (SPEC section 3)."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Sequence

import numpy as np

from .errors import BackendError
from .model_dir import ModelMetadata

Prediction = List[Any]  # [class:int, score, xmin, ymin, xmax, ymax]


def to_predictions(outputs: Sequence[np.ndarray], meta: ModelMetadata) -> List[Prediction]:
    """GluonCV-style ids (1,N,1), scores (1,N,1), bboxes (1,N,4) in model-input pixels to rows of
    [class, score, xmin, ymin, xmax, ymax] with corners as fractions of the image, clipped to 0..1,
    padding (id < 0) removed, sorted by score (highest first)."""
    if len(outputs) != 3:
        raise BackendError("the model returned {} outputs; an SSD/YOLOv3 detector returns 3 "
                           "(ids, scores, bboxes)".format(len(outputs)))
    by_role = dict(zip(meta.outputs, outputs))
    try:
        ids = np.asarray(by_role["ids"], dtype=np.float64).reshape(-1)
        scores = np.asarray(by_role["scores"], dtype=np.float64).reshape(-1)
        boxes = np.asarray(by_role["bboxes"], dtype=np.float64).reshape(-1, 4)
    except ValueError as e:
        raise BackendError("the model's outputs do not have the ids/scores/bboxes shapes: {}".format(e))
    if not len(ids) == len(scores) == len(boxes):
        raise BackendError("the model's outputs disagree on the number of detections: ids {}, "
                           "scores {}, bboxes {}".format(len(ids), len(scores), len(boxes)))
    keep = (ids >= 0) & np.isfinite(scores) & np.isfinite(boxes).all(axis=1)
    ids, scores, boxes = ids[keep], scores[keep], boxes[keep]
    scale = np.array([meta.width, meta.height, meta.width, meta.height], dtype=np.float64)
    boxes = np.clip(boxes / scale, 0.0, 1.0)
    order = np.argsort(-scores, kind="stable")
    return [[int(ids[i]), float(np.clip(scores[i], 0.0, 1.0))] + [float(v) for v in boxes[i]]
            for i in order]


def prediction_document(predictions: List[Prediction]) -> Dict[str, List[Prediction]]:
    return {"prediction": predictions}


def render(document: Dict[str, Any]) -> str:
    """The document as text that is valid JSON and a valid Python literal (user code calls eval).

    The two syntaxes differ only for NaN/Infinity, true/false/null; to_predictions removes
    non-finite values and the document holds no booleans or None, and allow_nan=False makes sure.
    """
    return json.dumps(document, allow_nan=False, separators=(", ", ": "))

