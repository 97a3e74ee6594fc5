"""The model's input contract, read from the artefact and checked against model.yaml.

A compiled model says what it takes: the TVM graph JSON of a Neo output names its argument nodes
and gives every entry's shape and dtype (`attrs.shape`, `attrs.dltype`, `node_row_ptr`), the
`.meta` file repeats names, shapes and dtypes (`Model.Inputs`/`Model.Outputs`, as DLR reads it),
and an ONNX graph declares its inputs and outputs. DLR checks only the element count of an input,
so a (1, 3, 512, 512) model fed NHWC pixels answers garbage without an error: the layout must come
from the model. model.yaml then adds only what no artefact says (mean/std, colour order, roles)
and anything it declares that the model contradicts is a load-time error.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..errors import ModelDirectoryError
from .directory import ModelMetadata

Shape = Tuple[Optional[int], ...]  # None: a dimension the model leaves open

_PARAMS_LIST_MAGIC = 0xF7E58D4F05049CB7
_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(float16)": "float16",
                "tensor(int8)": "int8", "tensor(double)": "float64", "tensor(int64)": "int64",
                "tensor(int32)": "int32"}
SUPPORTED_DTYPES = ("float32", "uint8")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Optional[Shape]  # None: unknown rank
    dtype: str


@dataclass(frozen=True)
class ModelIO:
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    source: str  # the file the specs come from, for messages


def fmt_shape(shape: Optional[Shape]) -> str:
    if shape is None:
        return "(unknown shape)"
    return "({})".format(", ".join("?" if d is None else str(d) for d in shape))


# ---- reading ------------------------------------------------------------------------------

def _dim(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _load_json(path: str) -> Any:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ModelDirectoryError("cannot read {!r} as JSON: {}".format(path, e)) from None


def params_names(path: str) -> Optional[List[str]]:
    """Names in a TVM params file (tvm.relay.save_param_dict); None when it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
            if len(head) < 24:
                return None
            magic, _reserved, count = struct.unpack("<QQQ", head)
            if magic != _PARAMS_LIST_MAGIC or count > 1000000:
                return None
            names = []
            for _ in range(count):
                raw = f.read(8)
                if len(raw) < 8:
                    return None
                (length,) = struct.unpack("<Q", raw)
                if length > 4096:
                    return None
                names.append(f.read(length).decode("utf-8", "replace"))
            return names
    except OSError:
        return None


def neo_io(files: Dict[str, str]) -> ModelIO:
    """Inputs and outputs of a Neo/TVM graph-runtime model from its graph JSON (what the runtime
    allocates), named by the .meta file where there is one."""
    graph_path = files["graph"]
    graph = _load_json(graph_path)
    try:
        nodes = graph["nodes"]
        row_ptr = graph["node_row_ptr"]
        attrs = graph["attrs"]
        shapes = attrs["shape"][1]
        dtypes = attrs["dltype"][1]
        weights = set(params_names(files["params"]) or ())
        inputs = tuple(
            TensorSpec(nodes[nid]["name"], tuple(_dim(d) for d in shapes[row_ptr[nid]]),
                       str(dtypes[row_ptr[nid]]))
            for nid in graph["arg_nodes"] if nodes[nid]["name"] not in weights)
        outputs = []
        for nid, index, _version in graph["heads"]:
            entry = row_ptr[nid] + index
            outputs.append(TensorSpec(str(nodes[nid].get("name", "")),
                                      tuple(_dim(d) for d in shapes[entry]), str(dtypes[entry])))
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ModelDirectoryError(
            "{!r} is not a TVM graph JSON (no {} in the expected place); a Neo model directory "
            "needs the graph the compiler wrote".format(graph_path, e)) from None
    source = os.path.basename(graph_path)
    meta_path = files.get("meta")
    if meta_path:
        named = _meta_names(_load_json(meta_path), len(inputs), len(outputs))
        if named is not None:
            in_names, out_names = named
            inputs = tuple(TensorSpec(n or s.name, s.shape, s.dtype) for n, s in zip(in_names, inputs))
            outputs = [TensorSpec(n or s.name, s.shape, s.dtype) for n, s in zip(out_names, outputs)]
            source += " and " + os.path.basename(meta_path)
    return ModelIO(inputs, tuple(outputs), source)


def _meta_names(meta: Any, n_in: int, n_out: int) -> Optional[Tuple[List[str], List[str]]]:
    """Input/output names from Neo's .meta ({"Model": {"Inputs": [{"name", "shape", "dtype"}],
    "Outputs": [...]}}), padded with "" where it is silent."""
    model = meta.get("Model") if isinstance(meta, dict) else None
    if not isinstance(model, dict):
        return None

    def names(key: str, n: int) -> List[str]:
        entries = model.get(key)
        entries = entries if isinstance(entries, list) else []
        out = [str(e.get("name", "")) if isinstance(e, dict) else "" for e in entries[:n]]
        return out + [""] * (n - len(out))

    return names("Inputs", n_in), names("Outputs", n_out)


def onnx_io(session: Any, source: str) -> ModelIO:
    """Inputs and outputs an ONNX Runtime session declares."""
    def spec(arg: Any) -> TensorSpec:
        shape = getattr(arg, "shape", None)
        dims = None if shape is None else tuple(_dim(d) for d in shape)
        return TensorSpec(arg.name, dims, _ONNX_DTYPES.get(arg.type, arg.type))

    return ModelIO(tuple(spec(a) for a in session.get_inputs()),
                   tuple(spec(a) for a in session.get_outputs()), source)


# ---- reconciling ------------------------------------------------------------------------------

def layout_of(shape: Shape) -> Tuple[Optional[str], bool]:
    """(layout, has batch axis) an image input's shape implies; layout None when it cannot tell
    (e.g. (1, 3, 3, 3) or open channel dimensions)."""
    batch = len(shape) == 4
    dims = shape[1:] if batch else shape
    first, last = dims[0] in (1, 3), dims[2] in (1, 3)
    if first and not last:
        return "NCHW", batch
    if last and not first:
        return "NHWC", batch
    return None, batch


def resolve(meta: ModelMetadata, io: ModelIO, default_size: Optional[Tuple[int, int]] = None
            ) -> ModelMetadata:
    """`meta` (model.yaml) completed with the model's input contract; ModelDirectoryError when
    the two disagree or the model is not a one-image detector."""
    if len(io.inputs) != 1:
        raise ModelDirectoryError(
            "the model ({}) has {} inputs ({}); a detector takes one image".format(
                io.source, len(io.inputs), ", ".join(
                    "{} {}".format(s.name, fmt_shape(s.shape)) for s in io.inputs) or "none"))
    spec = io.inputs[0]
    expects = "the model ({}) takes {!r} {} {}".format(io.source, spec.name, fmt_shape(spec.shape),
                                                       spec.dtype)

    def contradiction(key: str, declared: Any, actual: Any) -> ModelDirectoryError:
        return ModelDirectoryError(
            "model.yaml says {}: {} but {}, i.e. {} {}; remove {} from model.yaml or fix it"
            .format(key, declared, expects, key, actual, key))

    declared = meta.declared
    changes: Dict[str, Any] = {"contract_source": io.source, "input_name": spec.name}
    if "input_name" in declared and meta.input_name != spec.name:
        raise contradiction("input_name", meta.input_name, spec.name)
    if spec.dtype not in SUPPORTED_DTYPES:
        raise ModelDirectoryError("{}; input dtypes served are {}".format(
            expects, ", ".join(SUPPORTED_DTYPES)))
    if "dtype" in declared and meta.dtype != spec.dtype:
        raise contradiction("dtype", meta.dtype, spec.dtype)
    changes["dtype"] = spec.dtype
    if spec.dtype == "uint8" and meta.normalises:
        if {"mean", "std"} & declared:
            raise ModelDirectoryError("model.yaml gives mean/std but {}: a uint8 input takes the "
                                      "pixels as they are; remove mean and std".format(expects))
        changes["mean"], changes["std"] = (0.0,) * 3, (1.0,) * 3  # a format's 0..1 default
    shape = spec.shape
    if shape is None or len(shape) not in (3, 4) or (len(shape) == 4 and shape[0] not in (1, None)):
        raise ModelDirectoryError("{}; an image input is (1, H, W, 3), (1, 3, H, W) or an "
                                  "unbatched (3, H, W)".format(expects))
    layout, batch = layout_of(shape)
    changes["batch_axis"] = batch
    if layout is None:
        layout = meta.layout
    elif "layout" in declared and meta.layout != layout:
        raise contradiction("layout", meta.layout, layout)
    changes["layout"] = layout
    dims = shape[1:] if batch else shape
    h, w = (dims[1], dims[2]) if layout == "NCHW" else (dims[0], dims[1])
    channels = dims[0] if layout == "NCHW" else dims[2]
    if channels not in (3, None):
        raise ModelDirectoryError("{}: {} channel(s); images are served as 3 (RGB or BGR)"
                                  .format(expects, channels))
    if "input_size" in declared:
        if any(got is not None and got != want for want, got in ((meta.height, h), (meta.width, w))):
            raise contradiction("input_size", [meta.height, meta.width], [h, w])
    else:
        size = default_size or (meta.height, meta.width)
        changes["height"] = h if h is not None else size[0]
        changes["width"] = w if w is not None else size[1]
    return meta.replace(**changes)


def describe_input(meta: ModelMetadata) -> str:
    """One line about what the model is fed, for logs and check-model."""
    shape = ((1,) if meta.batch_axis else ()) + (
        (3, meta.height, meta.width) if meta.layout == "NCHW" else (meta.height, meta.width, 3))
    return "{} {} {} {} {}{}{} (from {})".format(
        meta.input_name, fmt_shape(shape), meta.layout if meta.batch_axis else meta.layout[1:],
        meta.dtype, meta.color, ", mean {} std {}".format(list(meta.mean), list(meta.std))
        if meta.normalises else "", ", letterboxed" if meta.resize == "letterbox" else "",
        meta.contract_source or "model.yaml")
