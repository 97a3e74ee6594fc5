"""Recognise a model directory and read its optional metadata.

Two layouts are understood:

* a SageMaker Neo / TVM graph-runtime directory (run with DLR): exactly one ``*.so`` model library,
  one ``*.json`` graph, one ``*.params`` file, optionally ``*.meta`` (input/output names) and
  ``libdlr.so`` (the runtime Neo ships beside the model);
* an ONNX directory (run with ONNX Runtime): exactly one ``*.onnx`` file.

Both may carry ``model.yaml`` (YAML or JSON) describing the input and outputs, and ``labels.txt``
(one class name per line, line number = class id). Without them the GluonCV export defaults of the
SPEC apply: input ``data``, float32 NHWC (1, 512, 512, 3), RGB pixel values 0-255, outputs
``ids, scores, bboxes`` in that order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .config_files import ConfigFileError, load_file
from .errors import ModelDirectoryError

METADATA_FILE = "model.yaml"
LABELS_FILE = "labels.txt"
RUNTIME_LIBRARY = "libdlr.so"
OUTPUT_ROLES = ("ids", "scores", "bboxes")


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
    outputs: Tuple[str, str, str] = OUTPUT_ROLES
    labels: Optional[Tuple[str, ...]] = None

    @property
    def normalises(self) -> bool:
        return self.mean != (0.0, 0.0, 0.0) or self.std != (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ModelDirectory:
    path: str
    kind: str  # "dlr" or "onnx"
    metadata: ModelMetadata
    files: Dict[str, str] = field(default_factory=dict)  # role -> absolute path

    @property
    def labels(self) -> Optional[Tuple[str, ...]]:
        return self.metadata.labels


def _by_suffix(names: List[str], suffix: str) -> List[str]:
    return sorted(n for n in names if n.endswith(suffix) and n != RUNTIME_LIBRARY)


def open_model_directory(path: str) -> ModelDirectory:
    """Inspect `path` and return what it holds; raise ModelDirectoryError naming the problem."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise ModelDirectoryError(
            "model directory {!r} does not exist or is not a directory".format(path))
    names = [n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n))]
    if not names:
        raise ModelDirectoryError("model directory {!r} is empty".format(path))

    onnx = _by_suffix(names, ".onnx")
    so, graph, params, meta = (_by_suffix(names, s) for s in (".so", ".json", ".params", ".meta"))
    neo = so or graph or params
    if onnx and neo:
        raise ModelDirectoryError(
            "model directory {!r} is ambiguous: it holds both an ONNX model ({}) and Neo/DLR "
            "artifacts ({})".format(path, ", ".join(onnx), ", ".join(so + graph + params)))
    full = lambda n: os.path.join(path, n)  # noqa: E731
    if onnx:
        if len(onnx) > 1:
            raise ModelDirectoryError(
                "model directory {!r} is ambiguous: it holds {} ONNX files ({}); keep exactly one"
                .format(path, len(onnx), ", ".join(onnx)))
        kind, files = "onnx", {"onnx": full(onnx[0])}
    elif neo:
        for what, found in (("*.so model library", so), ("*.json graph", graph),
                            ("*.params parameters", params)):
            if len(found) != 1:
                raise ModelDirectoryError(
                    "model directory {!r} is not a valid Neo/DLR model: it needs exactly one {} "
                    "file, found {} ({})".format(path, what, len(found), ", ".join(found) or "none"))
        if len(meta) > 1:
            raise ModelDirectoryError(
                "model directory {!r} holds {} *.meta files ({}); keep at most one"
                .format(path, len(meta), ", ".join(meta)))
        kind = "dlr"
        files = {"so": full(so[0]), "graph": full(graph[0]), "params": full(params[0])}
        if meta:
            files["meta"] = full(meta[0])
        if RUNTIME_LIBRARY in names:
            files["libdlr"] = full(RUNTIME_LIBRARY)
    else:
        raise ModelDirectoryError(
            "model directory {!r} holds no model: expected one *.onnx file, or a Neo/DLR model "
            "(*.so, *.json, *.params); found {}".format(path, ", ".join(sorted(names))))
    for f in files.values():
        if os.path.getsize(f) == 0:
            raise ModelDirectoryError("model file {!r} is empty".format(f))
    return ModelDirectory(path=path, kind=kind, metadata=read_metadata(path), files=files)


def read_metadata(path: str) -> ModelMetadata:
    """Read model.yaml and labels.txt from `path`; absent files give the GluonCV defaults."""
    raw: Dict[str, Any] = {}
    meta_file = os.path.join(path, METADATA_FILE)
    if os.path.isfile(meta_file):
        try:
            raw = load_file(meta_file, "model metadata") or {}
        except ConfigFileError as e:
            raise ModelDirectoryError(str(e)) from None
        if not isinstance(raw, dict):
            raise ModelDirectoryError(
                "{!r} must hold a mapping of settings, not {}".format(meta_file, type(raw).__name__))
    try:
        meta = _parse_metadata(raw, meta_file)
    except (TypeError, ValueError) as e:
        raise ModelDirectoryError("{!r}: {}".format(meta_file, e)) from None
    labels_file = os.path.join(path, LABELS_FILE)
    if meta.labels is None and os.path.isfile(labels_file):
        with open(labels_file, "r", encoding="utf-8") as f:
            labels = tuple(line.strip() for line in f if line.strip())
        meta = _replace(meta, labels=labels)
    return meta


def _replace(meta: ModelMetadata, **changes: Any) -> ModelMetadata:
    values = dict(meta.__dict__)
    values.update(changes)
    return ModelMetadata(**values)


_KNOWN = {"input_name", "layout", "input_size", "color", "dtype", "mean", "std", "outputs", "labels"}


def _parse_metadata(raw: Dict[str, Any], where: str) -> ModelMetadata:
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise ValueError("unknown setting(s) {}; known: {}".format(
            ", ".join(unknown), ", ".join(sorted(_KNOWN))))
    values: Dict[str, Any] = {}
    if "input_name" in raw:
        values["input_name"] = str(raw["input_name"])
    if "layout" in raw:
        values["layout"] = _choice("layout", raw["layout"], ("NHWC", "NCHW"))
    if "color" in raw:
        values["color"] = _choice("color", raw["color"], ("RGB", "BGR"))
    if "dtype" in raw:
        values["dtype"] = _choice("dtype", raw["dtype"], ("float32", "uint8"))
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
    if "outputs" in raw:
        outs = raw["outputs"]
        if not isinstance(outs, (list, tuple)) or sorted(outs) != sorted(OUTPUT_ROLES):
            raise ValueError("outputs must list the roles ids, scores, bboxes in the model's "
                             "output order, got {!r}".format(outs))
        values["outputs"] = tuple(outs)
    if "labels" in raw:
        labels = raw["labels"]
        if not isinstance(labels, (list, tuple)) or not all(isinstance(v, str) for v in labels):
            raise ValueError("labels must be a list of class names, got {!r}".format(labels))
        values["labels"] = tuple(labels)
    return ModelMetadata(**values)


def _choice(key: str, value: Any, allowed: Tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError("{} must be one of {}, got {!r}".format(key, ", ".join(allowed), value))
    return str(value)
