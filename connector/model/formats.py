"""Detector output formats: recognised from the model's outputs (or declared as `format:` in
model.yaml) and decoded to one form: class ids, scores and xyxy boxes in model-input pixels.

Each :class:`Format` in :data:`FORMATS` states once what its outputs look like (``shapes``, used by
every message) and how a single output of that shape is recognised (``claims``) or accepted when
model.yaml declares the format (``fits``):

* gluoncv: GluonCV SSD/YOLOv3 exports and SageMaker Neo compilations of them, after NMS, padding
  rows with id -1 (the original's format);
* yolov8: Ultralytics YOLOv8/11 without NMS (cx, cy, w, h, then one score per class), filtered and
  suppressed here (class-wise NMS);
* yolov5: Ultralytics YOLOv5 without NMS (cx, cy, w, h, objectness, then class probabilities;
  score = objectness * probability);
* yolo-nms: Ultralytics exports with `nms=True` (x1, y1, x2, y2, score, class);
* torchvision: torchvision SSD/RetinaNet/Faster R-CNN exports (outputs named so or mapped with
  `outputs:`).

The Ultralytics formats expect letterboxed RGB input scaled to 0..1 (their training pipeline);
torchvision models take 0..1 RGB; GluonCV exports take 0..255 with mean/std baked in. model.yaml
overrides any of these.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .contract import TensorSpec, fmt_shape
from ..errors import BackendError, ModelDirectoryError
from .directory import OUTPUT_ROLES, TORCHVISION_ROLES, ModelMetadata

log = logging.getLogger(__name__)

# (classes int64 (K,), scores float64 (K,), boxes float64 (K, 4) xyxy in model-input pixels)
Detections = Tuple[np.ndarray, np.ndarray, np.ndarray]
Decoder = Callable[[Sequence[np.ndarray], ModelMetadata], Detections]
Dim = Optional[int]  # None: a dimension the model leaves open

MAX_DETECTIONS = 300  # Ultralytics' max_det
MAX_NMS_CANDIDATES = 30000  # Ultralytics' max_nms: the best this many enter NMS
_CLASS_OFFSET = 8192.0  # shifts each class's boxes apart so one NMS pass is class-wise


@dataclass(frozen=True)
class Format:
    name: str
    decode: Decoder
    resize: str  # "stretch" or "letterbox"
    std: float  # pixel scale: 1 (0..255 input) or 255 (0..1 input)
    default_size: Tuple[int, int]  # (height, width) when the model leaves its size open
    shapes: str  # what its outputs look like, for every message that names it
    roles: Tuple[str, ...] = ()  # named outputs (gluoncv, torchvision)
    # Single-output formats: whether one (1, a, b) output is this format when nothing says so,
    # and whether it can be when model.yaml says so (open dimensions allowed).
    claims: Optional[Callable[[Dim, Dim], bool]] = None
    accepts: Optional[Callable[[Dim, Dim], bool]] = None

    def fits(self, shape: Optional[Tuple[Dim, ...]]) -> bool:
        """Whether a single output of `shape` can be this format's (unknown rank: yes)."""
        if shape is None:
            return True
        if self.accepts is None or len(shape) != 3 or shape[0] not in (1, None):
            return False
        return self.accepts(shape[1], shape[2])

    def shape_error(self, outputs: Sequence[np.ndarray]) -> BackendError:
        return BackendError("a {} output is {}; got {}".format(
            self.name, self.shapes, ", ".join(fmt_shape(np.shape(o)) for o in outputs)))

    def apply_defaults(self, meta: ModelMetadata) -> ModelMetadata:
        """Fill in the preprocessing this format expects where model.yaml is silent."""
        changes: Dict[str, object] = {"format": self.name}
        if "resize" not in meta.declared:
            changes["resize"] = self.resize
        if "std" not in meta.declared and "mean" not in meta.declared:
            changes["std"] = (self.std,) * 3
        if self.roles and "outputs" not in meta.declared:
            changes["outputs"] = self.roles
        return meta.replace(**changes)


def _empty() -> Detections:
    return np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4))


def _by_role(outputs: Sequence[np.ndarray], meta: ModelMetadata) -> Dict[str, np.ndarray]:
    if len(outputs) != len(meta.outputs):
        raise BackendError("the model returned {} outputs; a {} detector returns {} ({})".format(
            len(outputs), meta.format, len(meta.outputs), ", ".join(meta.outputs)))
    return dict(zip(meta.outputs, outputs))


def _flat(array: np.ndarray, width: int, what: str) -> np.ndarray:
    try:
        return np.asarray(array, dtype=np.float64).reshape((-1, width) if width > 1 else -1)
    except ValueError:
        raise BackendError("the model's {} output has shape {}, not (1, N{})".format(
            what, fmt_shape(np.shape(array)), ", 4" if width == 4 else "")) from None


def _same_length(**arrays: np.ndarray) -> None:
    if len({len(a) for a in arrays.values()}) > 1:
        raise BackendError("the model's outputs disagree on the number of detections: {}".format(
            ", ".join("{} {}".format(k, len(v)) for k, v in arrays.items())))


def _decode_named(outputs: Sequence[np.ndarray], meta: ModelMetadata, class_role: str,
                  box_role: str) -> Detections:
    """Formats whose model has filtered and suppressed already: class, score and box outputs,
    rows with a negative class are padding (GluonCV) and NaN classes are dropped too."""
    by_role = _by_role(outputs, meta)
    classes = _flat(by_role[class_role], 1, class_role)
    scores = _flat(by_role["scores"], 1, "scores")
    boxes = _flat(by_role[box_role], 4, box_role)
    _same_length(**{class_role: classes, "scores": scores, box_role: boxes})
    keep = classes >= 0
    return classes[keep].astype(np.int64), scores[keep], boxes[keep]


def decode_gluoncv(outputs: Sequence[np.ndarray], meta: ModelMetadata) -> Detections:
    return _decode_named(outputs, meta, "ids", "bboxes")


def decode_torchvision(outputs: Sequence[np.ndarray], meta: ModelMetadata) -> Detections:
    return _decode_named(outputs, meta, "labels", "boxes")


def _single(outputs: Sequence[np.ndarray], meta: ModelMetadata) -> np.ndarray:
    fmt = FORMATS[str(meta.format)]
    if len(outputs) != 1 or not fmt.fits(tuple(np.shape(outputs[0]))):
        raise fmt.shape_error(outputs)
    return np.asarray(outputs[0], dtype=np.float64)[0]


def _xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    half = xywh[:, 2:4] / 2.0
    return np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
        max_keep: int = MAX_DETECTIONS) -> np.ndarray:
    """Indices kept by greedy class-wise non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES]
    shifted = boxes + (classes.astype(np.float64) * _CLASS_OFFSET)[:, None]
    x1, y1, x2, y2 = shifted.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep: List[int] = []
    while order.size and len(keep) < max_keep:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _suppress(boxes_xywh: np.ndarray, class_scores: np.ndarray, meta: ModelMetadata) -> Detections:
    classes = np.argmax(class_scores, axis=1) if class_scores.size else np.zeros(0, np.int64)
    scores = class_scores[np.arange(len(classes)), classes] if len(classes) else np.zeros(0)
    keep = np.isfinite(scores) & (scores > meta.score_threshold)
    if not keep.any():
        return _empty()
    boxes = _xywh_to_xyxy(boxes_xywh[keep])
    classes, scores = classes[keep], scores[keep]
    finite = np.isfinite(boxes).all(axis=1)
    if not finite.all():
        log.debug("dropped %d candidate box(es) with non-finite coordinates", int((~finite).sum()))
        boxes, classes, scores = boxes[finite], classes[finite], scores[finite]
    kept = nms(boxes, scores, classes, meta.iou_threshold)
    return classes[kept].astype(np.int64), scores[kept], boxes[kept]


def decode_yolov8(outputs: Sequence[np.ndarray], meta: ModelMetadata) -> Detections:
    rows = _single(outputs, meta).T  # (anchors, 4 + classes)
    return _suppress(rows[:, :4], rows[:, 4:], meta)


def decode_yolov5(outputs: Sequence[np.ndarray], meta: ModelMetadata) -> Detections:
    rows = _single(outputs, meta)  # (anchors, 5 + classes)
    rows = rows[rows[:, 4] > meta.score_threshold]  # objectness first: most anchors go here
    return _suppress(rows[:, :4], rows[:, 5:] * rows[:, 4:5], meta)


def decode_yolo_nms(outputs: Sequence[np.ndarray], meta: ModelMetadata) -> Detections:
    rows = _single(outputs, meta)
    rows = rows[rows[:, 4] > meta.score_threshold]  # unused rows are zeros
    return rows[:, 5].astype(np.int64), rows[:, 4], rows[:, :4]


ULTRALYTICS = dict(resize="letterbox", std=255.0, default_size=(640, 640))


def _nms_export(a: Dim, b: Dim) -> bool:
    # (1, 300, 6) is an NMS export; a YOLOv5 with one class has thousands of anchors
    return b == 6 and (a is None or 6 <= a <= 1000)


FORMATS: Dict[str, Format] = {f.name: f for f in (
    Format("gluoncv", decode_gluoncv, "stretch", 1.0, (512, 512),
           "ids (1,N,1), scores (1,N,1) and bboxes (1,N,4)", OUTPUT_ROLES),
    Format("yolov8", decode_yolov8, shapes="(1, 4+classes, anchors)",  # type: ignore[arg-type]
           claims=lambda a, b: a is not None and a >= 5 and (b is None or a < b),
           accepts=lambda a, b: a is None or a >= 5, **ULTRALYTICS),
    Format("yolov5", decode_yolov5, shapes="(1, anchors, 5+classes)",  # type: ignore[arg-type]
           claims=lambda a, b: b is not None and b >= 6 and not _nms_export(a, b) and (
               b > 6 if a is None else a >= b),
           accepts=lambda a, b: b is None or b >= 6, **ULTRALYTICS),
    Format("yolo-nms", decode_yolo_nms, shapes="(1, N, 6)",  # type: ignore[arg-type]
           claims=_nms_export, accepts=lambda a, b: b in (6, None), **ULTRALYTICS),
    Format("torchvision", decode_torchvision, "stretch", 255.0, (512, 512),
           "boxes (N,4), scores (N) and labels (N)", TORCHVISION_ROLES),
)}
# The formats of one (1, a, b) output; their `claims` never overlap, so the order is the table's.
SINGLE_OUTPUT = tuple(f for f in FORMATS.values() if f.claims is not None)
KNOWN_SHAPES = "ids, scores and boxes: GluonCV {}; torchvision {}; Ultralytics YOLO one {}".format(
    FORMATS["gluoncv"].shapes, FORMATS["torchvision"].shapes,
    ", ".join(f.shapes for f in SINGLE_OUTPUT[:-1]) + " or " + SINGLE_OUTPUT[-1].shapes)


def _single_output_format(shape: Tuple[Dim, ...]) -> Optional[str]:
    if len(shape) != 3 or shape[0] not in (1, None):
        return None
    return next((f.name for f in SINGLE_OUTPUT if f.claims(shape[1], shape[2])), None)  # type: ignore[misc]


def _guess(outputs: Sequence[TensorSpec], meta: ModelMetadata) -> Optional[str]:
    names = [o.name for o in outputs]
    if "outputs" in meta.declared:
        return "torchvision" if sorted(meta.outputs) == sorted(TORCHVISION_ROLES) else "gluoncv"
    if sorted(names) == sorted(TORCHVISION_ROLES):
        return "torchvision"
    if len(outputs) == 3:
        shapes = [o.shape for o in outputs]
        if all(s is None or (len(s) == 3 and s[0] in (1, None)) for s in shapes):
            return "gluoncv"
        return None
    if len(outputs) == 1 and outputs[0].shape is not None:
        return _single_output_format(outputs[0].shape)
    return None


def recognise(outputs: Sequence[TensorSpec], meta: ModelMetadata, source: str) -> Format:
    """The format of a model with these outputs (model.yaml's `format:` wins); a
    ModelDirectoryError saying what the model returns when it is no detector we know."""
    name = meta.format or _guess(outputs, meta)
    described = ", ".join("{} {}".format(o.name, fmt_shape(o.shape)) for o in outputs)
    if name is None:
        raise ModelDirectoryError(
            "the model ({}) has {} output{} of shape{} {}; a detector has {}. If it is a detector "
            "in one of these forms, declare format: in model.yaml".format(
                source, len(outputs), "" if len(outputs) == 1 else "s",
                "" if len(outputs) == 1 else "s", described or "none", KNOWN_SHAPES))
    fmt = FORMATS[name]
    expected = len(fmt.roles) if fmt.roles else 1
    if len(outputs) != expected:
        raise ModelDirectoryError(
            "model.yaml says format: {} ({} output{}) but the model ({}) has {}: {}".format(
                name, expected, "" if expected == 1 else "s", source, len(outputs), described))
    if not fmt.roles and not fmt.fits(outputs[0].shape):
        raise ModelDirectoryError(
            "model.yaml says format: {} but the model's ({}) output is {}; a {} output is {}"
            .format(name, source, described, name, fmt.shapes))
    return fmt


def configure(outputs: Sequence[TensorSpec], meta: ModelMetadata, source: str
              ) -> Tuple[Format, ModelMetadata]:
    """The format and `meta` with that format's defaults; outputs named after their roles
    (ids/scores/bboxes, boxes/scores/labels, in any order) are taken by name."""
    fmt = recognise(outputs, meta, source)
    meta = fmt.apply_defaults(meta)
    names = tuple(o.name for o in outputs)
    if fmt.roles and "outputs" not in meta.declared and sorted(names) == sorted(fmt.roles):
        meta = meta.replace(outputs=names)
    return fmt, meta
