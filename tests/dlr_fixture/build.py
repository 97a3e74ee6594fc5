"""Build a Neo/TVM graph-runtime model directory that the real libdlr.so (DLR 1.6) runs.

No offline compiler for that format exists here, so the model is made by hand: the operator is
C code in the TVM packed-function ABI (detector_op.c, compiled with gcc), and this module writes
the graph JSON and the parameter file in the formats the TVM graph runtime inside libdlr reads.
See detector_op.c for what the model detects and for the fault-trigger pixels.

Typical use::

    from tests.dlr_fixture.build import build_dlr_model, blank_image, draw_box
    model_dir = build_dlr_model(tmp_path / "model")
    img = blank_image(); draw_box(img, RED, 100, 50, 200, 120)
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "detector_op.c")
CFLAGS = ("-shared", "-fPIC", "-O2", "-std=c99", "-Wall", "-Wextra")

# TVM's magic numbers (include/tvm/runtime/ndarray.h, src/runtime/graph/graph_runtime.h).
NDARRAY_LIST_MAGIC = 0xF7E58D4F05049CB7
NDARRAY_MAGIC = 0xDD5E40F096B4A13F

# Classes the fixture detects, as RGB colours that satisfy the default thresholds.
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
CLASS_OF = {RED: 0, GREEN: 1, BLUE: 2}
# Fault triggers: the top-left pixel of the model input (channel order as the model sees it).
ERROR_PIXEL = (1, 2, 3)
CRASH_PIXEL = (9, 9, 9)


def sleep_pixel(tenths_of_second: int) -> Tuple[int, int, int]:
    """Top-left pixel that makes the op sleep `tenths_of_second` * 100 ms (0..255)."""
    return (7, 7, int(tenths_of_second))


def memory_pixel(sixteen_mib: int) -> Tuple[int, int, int]:
    """Top-left pixel that makes the op allocate and touch `sixteen_mib` * 16 MiB for 1 s."""
    return (5, 5, int(sixteen_mib))


DEFAULT_HIGH, DEFAULT_LOW, DEFAULT_MIN_AREA = 200.0, 60.0, 16.0
DEFAULT_MAX_DETECTIONS = 16
OUTPUT_NAMES = ("ids", "scores", "bboxes")

_cache_lock = threading.Lock()
_cache_dir: Optional[str] = None


def installed_libdlr() -> str:
    """Where the dlr==1.6.0 wheel puts its runtime library (outside site-packages)."""
    return os.path.join(sys.prefix, "dlr", "libdlr.so")


def compile_detector(cc: str = "gcc") -> str:
    """Compile detector_op.c once per process (keyed by source and flags); return the .so path."""
    global _cache_dir
    with open(SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(source + " ".join((cc,) + CFLAGS).encode()).hexdigest()[:16]
    with _cache_lock:
        if _cache_dir is None:
            _cache_dir = tempfile.mkdtemp(prefix="dlr-fixture-")
            atexit.register(shutil.rmtree, _cache_dir, True)
        target = os.path.join(_cache_dir, "detector-{}.so".format(key))
        if not os.path.exists(target):
            partial = target + ".partial"
            proc = subprocess.run([cc, *CFLAGS, "-o", partial, SOURCE],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                raise RuntimeError("compiling {} failed:\n{}".format(
                    SOURCE, proc.stdout.decode(errors="replace")))
            os.replace(partial, target)
    return target


def _write_str(buf: bytearray, s: str) -> None:
    raw = s.encode("utf-8")
    buf += struct.pack("<Q", len(raw)) + raw


_DLTYPES = {np.dtype("float32"): (2, 32), np.dtype("uint8"): (1, 8), np.dtype("int32"): (0, 32)}


def params_bytes(params: Dict[str, np.ndarray]) -> bytes:
    """Serialise named arrays the way tvm.relay.save_param_dict does (what LoadParams reads).

    Layout: u64 list magic, u64 reserved, vector<string> names (u64 count, then u64 length +
    bytes each), u64 array count, then per array: u64 array magic, u64 reserved, DLContext
    (i32 device_type = 1 CPU, i32 device_id = 0), i32 ndim, DLDataType (u8 code, u8 bits,
    u16 lanes), i64 shape[ndim], i64 data byte size, data (little endian, C order).
    """
    buf = bytearray(struct.pack("<QQ", NDARRAY_LIST_MAGIC, 0))
    buf += struct.pack("<Q", len(params))
    for name in params:
        _write_str(buf, name)
    buf += struct.pack("<Q", len(params))
    for arr in params.values():
        arr = np.ascontiguousarray(arr)
        code, bits = _DLTYPES[arr.dtype]
        buf += struct.pack("<QQiii", NDARRAY_MAGIC, 0, 1, 0, arr.ndim)
        buf += struct.pack("<BBH", code, bits, 1)
        buf += struct.pack("<{}q".format(arr.ndim), *arr.shape)
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        buf += struct.pack("<q", len(data)) + data
    return bytes(buf)


def graph_json(*, input_name: str = "data", input_shape: Sequence[int] = (1, 512, 512, 3),
               input_dtype: str = "float32", layout: str = "NHWC",
               max_detections: int = DEFAULT_MAX_DETECTIONS) -> Dict[str, object]:
    """The graph runtime's JSON: two argument nodes (input, thresholds) and one tvm_op node."""
    n = int(max_detections)
    func = "fixture_detect_nchw" if layout == "NCHW" else "fixture_detect_nhwc"
    return {
        "nodes": [
            {"op": "null", "name": input_name, "inputs": []},
            {"op": "null", "name": "thresholds", "inputs": []},
            {"op": "tvm_op", "name": "detector", "inputs": [[0, 0, 0], [1, 0, 0]],
             "attrs": {"func_name": func, "num_inputs": "2", "num_outputs": "3",
                       "flatten_data": "0"}},
        ],
        "arg_nodes": [0, 1],
        # node_row_ptr[i] = index of node i's first output entry; the op has three.
        "node_row_ptr": [0, 1, 2, 5],
        "heads": [[2, 0, 0], [2, 1, 0], [2, 2, 0]],
        "attrs": {
            "dltype": ["list_str", [input_dtype, "float32", "float32", "float32", "float32"]],
            "storage_id": ["list_int", [0, 1, 2, 3, 4]],
            "shape": ["list_shape", [list(input_shape), [3], [1, n, 1], [1, n, 1], [1, n, 4]]],
        },
    }


def metadata_json(*, input_name: str = "data", input_shape: Sequence[int] = (1, 512, 512, 3),
                  input_dtype: str = "float32", output_names: Iterable[str] = OUTPUT_NAMES,
                  target_device_type: Optional[str] = None) -> Dict[str, object]:
    """The Neo compiler's `.meta` file as DLR 1.6 reads it: Model.Outputs[i].name names output i
    (a top-level "Outputs" is ignored: DLR then reports no output names); when present,
    Requirements.TargetDeviceType must equal the device the model is loaded on, else the load
    fails ("Compiled model requires device type ...")."""
    meta: Dict[str, object] = {"Model": {
        "Inputs": [{"name": input_name, "dtype": input_dtype, "shape": list(input_shape)}],
        "Outputs": [{"name": name, "dtype": "float32"} for name in output_names],
    }}
    if target_device_type is not None:
        meta["Requirements"] = {"TargetDevice": "ML_C5", "TargetDeviceType": target_device_type}
    return meta


PathLike = Union[str, "os.PathLike[str]"]


def build_dlr_model(out_dir: PathLike, *, with_meta: bool = True,
                    high: float = DEFAULT_HIGH, low: float = DEFAULT_LOW,
                    min_area: float = DEFAULT_MIN_AREA,
                    max_detections: int = DEFAULT_MAX_DETECTIONS,
                    input_size: Tuple[int, int] = (512, 512), layout: str = "NHWC",
                    input_dtype: str = "float32", input_name: str = "data",
                    output_names: Iterable[str] = OUTPUT_NAMES,
                    target_device_type: Optional[str] = None,
                    with_libdlr: bool = False, cc: str = "gcc", name: str = "model",
                    graph_name: Optional[str] = None) -> str:
    """Write model.so, model.json, model.params (and model.meta, libdlr.so) into `out_dir`.

    `name` replaces "model" in the file names (Neo writes compiled.so, compiled.params,
    compiled.meta and, as `graph_name`, compiled_model.json).

    high/low/min_area go into the `thresholds` parameter (see detector_op.c). `with_libdlr`
    copies the installed libdlr.so into the directory, as Neo artifacts ship it. Returns the
    directory as a string.
    """
    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    h, w = input_size
    shape = (1, 3, h, w) if layout == "NCHW" else (1, h, w, 3)
    shutil.copyfile(compile_detector(cc), os.path.join(out, name + ".so"))
    with open(os.path.join(out, graph_name or name + ".json"), "w") as f:
        json.dump(graph_json(input_name=input_name, input_shape=shape, input_dtype=input_dtype,
                             layout=layout, max_detections=max_detections), f)
    thresholds = np.array([high, low, min_area], dtype=np.float32)
    with open(os.path.join(out, name + ".params"), "wb") as f:
        f.write(params_bytes({"thresholds": thresholds}))
    if with_meta:
        with open(os.path.join(out, name + ".meta"), "w") as f:
            json.dump(metadata_json(input_name=input_name, input_shape=shape,
                                    input_dtype=input_dtype, output_names=output_names,
                                    target_device_type=target_device_type), f)
    if with_libdlr:
        # A real copy (not a link): the test that checks which library got mapped relies on a
        # distinct file.
        shutil.copyfile(installed_libdlr(), os.path.join(out, "libdlr.so"))
    return out


# ---- images -------------------------------------------------------------------------------

def blank_image(height: int = 512, width: int = 512, colour: Tuple[int, int, int] = (128, 128, 128)
                ) -> np.ndarray:
    """An RGB uint8 image of one neutral colour (never a detection)."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[...] = colour
    return img


def draw_box(img: np.ndarray, colour: Tuple[int, int, int], x0: int, y0: int, x1: int, y1: int
             ) -> np.ndarray:
    """Fill img[y0:y1, x0:x1]; the fixture then reports the box [x0, y0, x1, y1]."""
    img[y0:y1, x0:x1] = colour
    return img


def set_trigger(img: np.ndarray, pixel: Tuple[int, int, int], block: int = 16) -> np.ndarray:
    """Paint a uniform top-left block so that the model's top-left pixel is `pixel` even after
    resizing."""
    img[:block, :block] = pixel
    return img


def to_tensor(img: np.ndarray, layout: str = "NHWC", dtype: str = "float32") -> np.ndarray:
    """The model input for an RGB image already at the model's size."""
    t = img[np.newaxis].astype(dtype)
    return np.ascontiguousarray(t.transpose(0, 3, 1, 2)) if layout == "NCHW" else t


def detections(outputs: Sequence[np.ndarray]) -> list:
    """[(class, score, [xmin, ymin, xmax, ymax]), ...] from (ids, scores, bboxes), padding removed."""
    ids, scores, boxes = outputs
    out = []
    for i in range(ids.shape[1]):
        if ids[0, i, 0] < 0:
            continue
        out.append((int(ids[0, i, 0]), float(scores[0, i, 0]), [float(v) for v in boxes[0, i]]))
    return out
