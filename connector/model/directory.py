"""Recognise a model directory and read its optional metadata.

Two layouts are understood:

* a SageMaker Neo / TVM graph-runtime directory (run with DLR), read as DLR reads it: one ``*.so``
  model library, one ``*.json`` graph, one ``*.params`` file, optionally one ``*.meta`` and
  ``libdlr.so`` (the runtime Neo ships beside the model). Like DLR, the auxiliary JSON files of a
  Neo output (``model-shapes.json``, ``hyperparams.json``) are not graphs, and files DLR never
  opens (README, notes, ``*.partial``) are ignored;
* an ONNX directory (run with ONNX Runtime): exactly one ``*.onnx`` file; other files are ignored.

Both may carry ``model.yaml`` (YAML or JSON) with what the model itself cannot say (mean/std,
colour order, output roles, format), and ``labels.txt`` (one class name per line, line number =
class id). The input contract (name, shape, layout, dtype) is read from the model once it is
loaded (connector.model.contract); the defaults here are GluonCV's and are only placeholders until then.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from ..config_files import load_file
from ..errors import ConfigFileError, ModelDirectoryError
from ..files import UnsafeFile, read_regular

METADATA_FILE = "model.yaml"
LABELS_FILE = "labels.txt"
# Far above any real label list (COCO's 80 names are 700 bytes; 20 000 long names fit): whoever
# can write the model directory cannot make every worker hold a file of any size.
MAX_LABELS_BYTES = 1024 * 1024
RUNTIME_LIBRARY = "libdlr.so"
OUTPUT_ROLES = ("ids", "scores", "bboxes")
# Named outputs of torchvision-style detection exports.
TORCHVISION_ROLES = ("boxes", "scores", "labels")
ROLE_SETS = (OUTPUT_ROLES, TORCHVISION_ROLES)
# JSON files a SageMaker Neo output may hold beside the graph, which DLR never reads as the graph
# (SAGEMAKER_AUXILIARY_JSON_FILES in neo-ai-dlr include/dlr_common.h, same list in 1.6 to 1.10).
AUXILIARY_JSON = ("model-shapes.json", "hyperparams.json")
NEO_PARTS = (("so", ".so", "*.so model library"), ("graph", ".json", "*.json graph"),
             ("params", ".params", "*.params parameters"))


@dataclass(frozen=True)
class ModelMetadata:
    input_name: str = "data"
    layout: str = "NHWC"  # or "NCHW"
    height: int = 512
    width: int = 512
    color: str = "RGB"  # or "BGR"
    dtype: str = "float32"  # or "uint8"
    # tensor = (pixel - mean) / std, per channel in `color` order; GluonCV exports bake it in.
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    # outputs[i] is the role of the model's i-th output
    outputs: Tuple[str, ...] = OUTPUT_ROLES
    labels: Optional[Tuple[str, ...]] = None
    # Output format (see connector.model.formats); None: recognised from the model's outputs.
    format: Optional[str] = None
    # "stretch" (plain resize, GluonCV) or "letterbox" (keep aspect, pad; Ultralytics);
    # None: what the format expects.
    resize: Optional[str] = None
    # For formats whose boxes are filtered and suppressed on our side (raw YOLO outputs).
    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    # The model.yaml keys that were given: those are checked against the model, the others are
    # filled in from it.
    declared: FrozenSet[str] = frozenset()
    # Where the input contract was read from (e.g. "model.json", "model.onnx"); "" before.
    contract_source: str = ""
    # The model's input has no batch axis (torchvision-style exports take one CHW image).
    batch_axis: bool = True

    @property
    def normalises(self) -> bool:
        return self.mean != (0.0, 0.0, 0.0) or self.std != (1.0, 1.0, 1.0)

    def replace(self, **changes: Any) -> "ModelMetadata":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelDirectory:
    path: str
    kind: str  # "dlr" or "onnx"
    metadata: ModelMetadata
    files: Dict[str, str] = field(default_factory=dict)  # role -> absolute path

    @property
    def labels(self) -> Optional[Tuple[str, ...]]:
        return self.metadata.labels

    def with_metadata(self, metadata: ModelMetadata) -> "ModelDirectory":
        return dataclasses.replace(self, metadata=metadata)


def neo_candidates(names: List[str]) -> Dict[str, List[str]]:
    """The files DLR 1.6 would take for each part of a graph-runtime model (InitModelPath in
    neo-ai-dlr src/dlr_common.cc): every *.json but the auxiliary ones is a graph, every *.so but
    libdlr.so a model library, and so on. Anything else DLR never opens."""
    found: Dict[str, List[str]] = {"so": [], "graph": [], "params": [], "meta": []}
    for n in sorted(names):
        if n.endswith(".json"):
            if n not in AUXILIARY_JSON:
                found["graph"].append(n)
        elif n.endswith(".so"):
            if n != RUNTIME_LIBRARY:
                found["so"].append(n)
        elif n.endswith(".params"):
            found["params"].append(n)
        elif n.endswith(".meta"):
            found["meta"].append(n)
    return found


def open_model_directory(path: str) -> ModelDirectory:
    """Inspect `path` and return what it holds; raise ModelDirectoryError naming the problem."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise ModelDirectoryError(
            "model directory {!r} does not exist or is not a directory".format(path))
    names = sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
    if not names:
        raise ModelDirectoryError("model directory {!r} is empty".format(path))

    onnx = [n for n in names if n.endswith(".onnx")]
    neo = neo_candidates(names)
    # A stray JSON file (notes, a config) beside an ONNX model is not a Neo artefact; a model
    # library or a parameters file is.
    neo_core = neo["so"] + neo["params"]
    if onnx and neo_core:
        raise ModelDirectoryError(
            "model directory {!r} is ambiguous: it holds both an ONNX model ({}) and Neo/DLR "
            "artifacts ({}); keep one model per directory".format(
                path, ", ".join(onnx), ", ".join(neo_core)))
    full = lambda n: os.path.join(path, n)  # noqa: E731
    if onnx:
        if len(onnx) > 1:
            raise ModelDirectoryError(
                "model directory {!r} is ambiguous: it holds {} ONNX files ({}); keep exactly one"
                .format(path, len(onnx), ", ".join(onnx)))
        kind, files = "onnx", {"onnx": full(onnx[0])}
    elif neo_core:
        _check_neo_parts(path, names, neo)
        kind = "dlr"
        files = {role: full(neo[role][0]) for role, _, _ in NEO_PARTS}
        if neo["meta"]:
            files["meta"] = full(neo["meta"][0])
        if RUNTIME_LIBRARY in names:
            files["libdlr"] = full(RUNTIME_LIBRARY)
    else:
        raise ModelDirectoryError(
            "model directory {!r} holds no model: expected one *.onnx file, or a Neo/DLR model "
            "(one *.so, one *.json graph, one *.params); found {}".format(path, ", ".join(names)))
    for f in files.values():
        if os.path.getsize(f) == 0:
            raise ModelDirectoryError("model file {!r} is empty".format(f))
    return ModelDirectory(path=path, kind=kind, metadata=read_metadata(path), files=files)


def _check_neo_parts(path: str, names: List[str], neo: Dict[str, List[str]]) -> None:
    for role, suffix, what in NEO_PARTS:
        found = neo[role]
        if len(found) == 1:
            continue
        if role == "graph" and not found and len(neo["so"]) == 1 and not neo["params"]:
            from .artefacts import factory_export_problem  # reads the library; only when needed
            problem = factory_export_problem(os.path.join(path, neo["so"][0]))
            if problem:
                raise ModelDirectoryError(problem)
        hint = ""
        if role == "graph" and found:
            hint = ("; DLR reads every *.json except {} as the graph, so move the others out"
                    .format(" and ".join(AUXILIARY_JSON)))
        raise ModelDirectoryError(
            "model directory {!r} is not a valid Neo/DLR model: it needs exactly one {} file, "
            "found {} ({}){}. A Neo model is one *.so, one *.json graph and one *.params, "
            "optionally one *.meta and libdlr.so; the directory holds: {}".format(
                path, what, len(found), ", ".join(found) or "none", hint, ", ".join(names)))
    if len(neo["meta"]) > 1:
        raise ModelDirectoryError(
            "model directory {!r} holds {} *.meta files ({}); keep at most one"
            .format(path, len(neo["meta"]), ", ".join(neo["meta"])))


def read_metadata(path: str) -> ModelMetadata:
    """Read model.yaml and labels.txt from `path`; absent files give the GluonCV defaults."""
    meta_file = os.path.join(path, METADATA_FILE)
    raw = load_settings_file(meta_file) if os.path.isfile(meta_file) else {}
    try:
        meta = _parse_metadata(raw)
    except (TypeError, ValueError) as e:
        raise ModelDirectoryError("{!r}: {}".format(meta_file, e)) from None
    labels_file = os.path.join(path, LABELS_FILE)
    if meta.labels is None and os.path.isfile(labels_file):
        meta = meta.replace(labels=read_labels(labels_file))
    return meta


def read_labels(labels_file: str) -> Tuple[str, ...]:
    """The class names of labels.txt, one a line (blank lines skipped); ModelDirectoryError for a
    file that is not a regular one, is over MAX_LABELS_BYTES or is not UTF-8. A link is followed,
    as for the model files (a mounted volume may hold links)."""
    try:
        data = read_regular(labels_file, MAX_LABELS_BYTES, "labels file", follow_links=True)
        text = data.decode("utf-8")
    except UnsafeFile as e:
        raise ModelDirectoryError("{!r} is {}; labels.txt holds one class name a line, at most {} "
                                  "bytes".format(labels_file, e.problem, MAX_LABELS_BYTES)) from None
    except UnicodeDecodeError as e:
        raise ModelDirectoryError("{!r} is not UTF-8 text (byte 0x{:02x} at offset {})".format(
            labels_file, e.object[e.start], e.start)) from None
    except OSError as e:
        raise ModelDirectoryError("cannot read {!r}: {}".format(labels_file, e.strerror or e)) from None
    # Lines as text-mode reading split them (\n, \r\n, \r), not str.splitlines()'s wider set.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return tuple(line.strip() for line in lines if line.strip())


def load_settings_file(meta_file: str) -> Dict[str, Any]:
    """The mapping model.yaml (YAML or JSON) holds; ModelDirectoryError when it holds none."""
    try:
        raw = load_file(meta_file, "model metadata") or {}
    except ConfigFileError as e:
        raise ModelDirectoryError(str(e)) from None
    if not isinstance(raw, dict):
        raise ModelDirectoryError(
            "{!r} must hold a mapping of settings, not {}".format(meta_file, type(raw).__name__))
    return raw


FORMATS = ("gluoncv", "yolov8", "yolov5", "yolo-nms", "torchvision")
_KNOWN = {"input_name", "layout", "input_size", "color", "dtype", "mean", "std", "outputs",
          "labels", "format", "resize", "score_threshold", "iou_threshold"}


def _parse_metadata(raw: Dict[str, Any]) -> ModelMetadata:
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise ValueError("unknown setting(s) {}; known: {}".format(
            ", ".join(map(str, unknown)), ", ".join(sorted(_KNOWN))))
    values: Dict[str, Any] = {}
    if "input_name" in raw:
        values["input_name"] = str(raw["input_name"])
    for key, allowed in (("layout", ("NHWC", "NCHW")), ("color", ("RGB", "BGR")),
                         ("dtype", ("float32", "uint8")), ("format", FORMATS),
                         ("resize", ("stretch", "letterbox"))):
        if key in raw:
            values[key] = _choice(key, raw[key], allowed)
    if "input_size" in raw:
        size = raw["input_size"]
        if isinstance(size, int):
            size = [size, size]
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(v, int) and 0 < v <= 8192 for v in size)):
            raise ValueError("input_size must be [height, width] of positive integers, got {!r}"
                             .format(raw["input_size"]))
        values["height"], values["width"] = size
    for key in ("mean", "std"):
        if key in raw:
            vec = raw[key]
            if isinstance(vec, (int, float)):
                vec = [vec] * 3
            if not isinstance(vec, (list, tuple)) or len(vec) != 3:
                raise ValueError("{} must be a number or three numbers, got {!r}".format(key, vec))
            values[key] = tuple(float(v) for v in vec)
            if key == "std" and any(v == 0 for v in values[key]):
                raise ValueError("std must not contain 0, got {!r}".format(vec))
    for key in ("score_threshold", "iou_threshold"):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError("{} must be a number from 0 to 1, got {!r}".format(key, value))
            values[key] = float(value)
    if "outputs" in raw:
        outs = raw["outputs"]
        if (not isinstance(outs, (list, tuple))
                or not any(sorted(outs) == sorted(roles) for roles in ROLE_SETS)):
            raise ValueError("outputs must list the roles of the model's outputs in its output "
                             "order: {}; got {!r}".format(
                                 " or ".join("[{}]".format(", ".join(r)) for r in ROLE_SETS), outs))
        values["outputs"] = tuple(outs)
    if "labels" in raw:
        labels = raw["labels"]
        if not isinstance(labels, (list, tuple)) or not all(isinstance(v, str) for v in labels):
            raise ValueError("labels must be a list of class names, got {!r}".format(labels))
        values["labels"] = tuple(labels)
    return ModelMetadata(declared=frozenset(raw), **values)


def _choice(key: str, value: Any, allowed: Tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError("{} must be one of {}, got {!r}".format(key, ", ".join(allowed), value))
    return str(value)
