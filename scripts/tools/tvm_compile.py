#!/usr/bin/env python3
"""Compile a GluonCV export or one of our demo ONNX detectors into a SageMaker Neo output directory.

Runs in the TVM tool venv (`scripts/tools/make-venv.sh tvm`: hhb-tvm 3.2.3 = a Relay-era TVM 0.16
with the graph executor, the generation of TVM that DLR 1.x runs), never in the runtime:

    .tools/tvm/bin/python scripts/tools/tvm_compile.py mxnet EXPORT_DIR OUT_DIR [--arch x86_64]
    .tools/tvm/bin/python scripts/tools/tvm_compile.py onnx-demo MODEL.onnx OUT_DIR [--arch aarch64]

OUT_DIR then holds what a Neo compilation job leaves in its output tarball:
  compiled.so          the bare model library (`factory.get_lib().export_library`), not the
                       single-file "factory" module: that is what libdlr's graph runtime loads
  compiled_model.json  the graph (`factory.get_graph_json()`)
  compiled.params      the weights (`relay.save_param_dict`)
  compiled.meta        input/output description in the format DLR reads ({"Model": {"Inputs":
                       [{"name", "dtype", "shape"}], "Outputs": [{"name", "dtype"}]}})
  model-shapes.json    Neo's record of the input shapes it was given (DLR skips it)
  hyperparams.json     Neo's record of the framework settings (DLR skips it)
and, for the test suite, reference.npz: the outputs of TVM's own graph executor on the
deterministic picture `pattern.pattern_image()`, read back from the files above (x86_64 only).

The demo ONNX detectors end in ONNX NonMaxSuppression, whose output shape depends on the data;
TVM's graph executor cannot allocate that ("Cannot allocate memory symbolic tensor shape
[T.Any(), 3]"). Their NMS tail is cut off and replaced by the fixed-shape Relay NMS GluonCV's
box_nms lowers to (get_valid_counts + non_max_suppression(return_indices=False)), padded to the
same 100 rows with -1, so the outputs keep the GluonCV ids/scores/bboxes contract.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from typing import Dict, List, Tuple

import numpy as np

# No network: autotvm would download pre-tuned ARM schedules ("tophub") during relay.build.
os.environ["TOPHUB_LOCATION"] = "NONE"
try:  # mxnet must be loaded before tvm: the other order segfaults (their bundled libraries clash)
    import mxnet as mx
except ImportError:  # only the GluonCV front end needs it
    mx = None
import tvm  # noqa: E402
from tvm import relay
from tvm.contrib import cc, graph_executor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pattern import pattern_image  # noqa: E402

TARGETS = {
    # (LLVM target, C compiler for export_library); hhb-tvm's default llvm target is RISC-V
    "x86_64": ("llvm -mtriple=x86_64-linux-gnu -mcpu=x86-64", "gcc"),  # any x86_64 (SSE2 only)
    "x86_64-avx2": ("llvm -mtriple=x86_64-linux-gnu -mcpu=core-avx2", "gcc"),  # Haswell and later
    "aarch64": ("llvm -mtriple=aarch64-linux-gnu -mattr=+neon", "aarch64-linux-gnu-gcc"),
    "armv7": ("llvm -mtriple=armv7l-linux-gnueabihf -mattr=+neon -mfloat-abi=hard", "arm-linux-gnueabihf-gcc"),
}
NEO_DEVICE = {"x86_64": "ml_c5", "x86_64-avx2": "ml_c5", "aarch64": "jetson_nano", "armv7": "rasp3b"}
OUTPUT_NAMES = ("ids", "scores", "bboxes")
# the demo detectors' post-processing (scripts/train_demo_detectors.py: MAX_DETS, NMS_IOU, SCORE_MIN)
DEMO_MAX_DETS, DEMO_NMS_IOU, DEMO_SCORE_MIN = 100, 0.45, 0.05


# --------------------------------------------------------------------------- front ends

def from_gluoncv_export(export_dir: str) -> Tuple[tvm.IRModule, Dict, List[int], Dict]:
    with open(os.path.join(export_dir, "export.json")) as f:
        info = json.load(f)
    sym = mx.sym.load(os.path.join(export_dir, info["files"]["symbol"]))
    saved = mx.nd.load(os.path.join(export_dir, info["files"]["params"]))
    arg = {k[4:]: v for k, v in saved.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in saved.items() if k.startswith("aux:")}
    shape = info["input_shape"]
    mod, params = relay.frontend.from_mxnet(sym, {"data": shape}, arg_params=arg, aux_params=aux)
    return mod, params, shape, info


def _cut_demo_nms(path: str):
    """The demo ONNX graph up to its raw outputs (boxes (1, A, 4) in pixels, scores (1, A, C))."""
    import onnx
    model = onnx.load(path)
    g = model.graph
    keep = [n for n in g.node if not any(o.startswith("pp_") or o in OUTPUT_NAMES for o in n.output)]
    raw = [n for n in g.node if n.op_type == "NonMaxSuppression"][0].input[0:2]  # boxes, transposed scores
    scores_in = [n for n in g.node if n.output[0] == raw[1]][0].input[0]
    del g.node[:]
    g.node.extend(keep)
    del g.output[:]
    for name in (raw[0], scores_in):
        g.output.append(onnx.helper.make_empty_tensor_value_info(name))
    weights = [t for t in g.initializer if not t.name.startswith("pp_")]
    del g.initializer[:]
    g.initializer.extend(weights)
    return model


def fixed_shape_nms(boxes: relay.Expr, scores: relay.Expr, num_anchors: int, num_classes: int) -> relay.Expr:
    """Per-class NMS with a fixed output shape: (1, MAX_DETS, 6) rows [id, score, x0, y0, x1, y1].

    Every (class, anchor) pair becomes one candidate row, as GluonCV's SSD builds them before
    box_nms; rows of different classes never suppress each other (force_suppress=False).
    """
    n = num_classes * num_anchors
    ids = relay.const(np.repeat(np.arange(num_classes, dtype=np.float32), num_anchors).reshape(1, n, 1))
    sc = relay.reshape(relay.transpose(scores, (0, 2, 1)), (1, n, 1))  # class-major, like ids
    bx = relay.reshape(relay.repeat(relay.expand_dims(boxes, 1), num_classes, axis=1), (1, n, 4))
    rows = relay.concatenate([ids, sc, bx], axis=2)
    valid, rows, indices = relay.vision.get_valid_counts(rows, score_threshold=DEMO_SCORE_MIN,
                                                        id_index=0, score_index=1)
    kept = relay.vision.non_max_suppression(
        rows, valid, indices, max_output_size=-1, iou_threshold=DEMO_NMS_IOU, force_suppress=False,
        top_k=-1, coord_start=2, score_index=1, id_index=0, return_indices=False, invalid_to_bottom=True)
    return relay.strided_slice(kept, begin=[0, 0, 0], end=[1, DEMO_MAX_DETS, 6])


def from_demo_onnx(path: str) -> Tuple[tvm.IRModule, Dict, List[int], Dict]:
    model = _cut_demo_nms(path)
    shape = [1, 512, 512, 3]
    mod, params = relay.frontend.from_onnx(model, {"data": shape}, freeze_params=True)
    mod = relay.transform.InferType()(mod)
    boxes_t, scores_t = mod["main"].ret_type.fields
    num_anchors, num_classes = int(scores_t.shape[1]), int(scores_t.shape[2])
    body = mod["main"].body
    top = fixed_shape_nms(relay.TupleGetItem(body, 0), relay.TupleGetItem(body, 1), num_anchors, num_classes)
    outs = [relay.strided_slice(top, begin=[0, 0, b], end=[1, DEMO_MAX_DETS, e]) for b, e in ((0, 1), (1, 2), (2, 6))]
    func = relay.Function(mod["main"].params, relay.Tuple(outs))
    info = {"source": os.path.basename(path), "anchors": num_anchors, "classes": num_classes,
            "max_detections": DEMO_MAX_DETS, "nms_iou": DEMO_NMS_IOU, "score_min": DEMO_SCORE_MIN}
    return tvm.IRModule.from_expr(func), params, shape, info


# --------------------------------------------------------------------------- Neo directory

def write_neo_dir(mod, params, shape: List[int], out: str, arch: str, framework: str, extra: Dict) -> Dict:
    target, compiler = TARGETS[arch]
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    with tvm.transform.PassContext(opt_level=3):
        factory = relay.build(mod, target=tvm.target.Target(target), params=params)
    build_s = time.time() - t0
    lib_path = os.path.join(out, "compiled.so")
    native = arch.startswith("x86_64")
    if native:
        factory.get_lib().export_library(lib_path)
    else:
        factory.get_lib().export_library(lib_path, fcompile=cc.cross_compiler(compiler))
    graph = factory.get_graph_json()
    with open(os.path.join(out, "compiled_model.json"), "w") as f:
        f.write(graph)
    with open(os.path.join(out, "compiled.params"), "wb") as f:
        f.write(sorted_param_blob(relay.save_param_dict(factory.get_params())))
    n_out = len(json.loads(graph)["heads"])
    names = list(OUTPUT_NAMES) if n_out == 3 else ["output_{}".format(i) for i in range(n_out)]
    meta = {"Requirements": {"TargetDevice": NEO_DEVICE[arch].upper(), "TargetDeviceType": "cpu"},
            "Compilation": {"CreatedTime": 0},  # fixed, so regenerated directories diff clean
            "Model": {"Inputs": [{"name": "data", "dtype": "float32", "shape": shape}],
                      "Outputs": [{"name": n, "dtype": "float32"} for n in names]}}
    with open(os.path.join(out, "compiled.meta"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(out, "model-shapes.json"), "w") as f:
        json.dump([{"data": shape}], f)
    with open(os.path.join(out, "hyperparams.json"), "w") as f:
        json.dump({"framework": framework, "target": NEO_DEVICE[arch]}, f)
    if native:
        np.savez_compressed(os.path.join(out, "reference.npz"), **reference_outputs(out, shape))
    return dict(extra, cpu=arch, target=target, build_seconds=round(build_s, 1), input_shape=shape)


def sorted_param_blob(blob: bytes) -> bytes:
    """The same params file with its arrays in name order.

    save_param_dict writes them in the order of a TVM Map, which changes from run to run; sorted,
    a rerun gives the same bytes. Layout (TVM's and libdlr's reader): u64 list magic, u64 reserved,
    u64 count + (u64 length, name) each, u64 count, then each array as u64 magic, u64 reserved,
    i32 device type, i32 device id, i32 ndim, u8 code, u8 bits, u16 lanes, i64 shape[ndim],
    i64 byte size, data.
    """
    def u64(at: int) -> int:
        return struct.unpack_from("<Q", blob, at)[0]

    at, names = 16, []
    for _ in range(u64(at)):
        length = u64(at + 8)
        names.append(blob[at + 16:at + 16 + length])
        at += 8 + length
    at += 8
    count, at, arrays = u64(at), at + 8, []
    assert count == len(names), "params file: {} names, {} arrays".format(len(names), count)
    for _ in range(count):
        ndim = struct.unpack_from("<i", blob, at + 24)[0]
        size_at = at + 32 + 8 * ndim
        end = size_at + 8 + u64(size_at)
        arrays.append(blob[at:end])
        at = end
    assert at == len(blob), "params file: {} trailing bytes".format(len(blob) - at)
    order = sorted(range(count), key=lambda i: names[i])
    out = [blob[:16], struct.pack("<Q", count)]
    out += [struct.pack("<Q", len(names[i])) + names[i] for i in order]
    out += [struct.pack("<Q", count)] + [arrays[i] for i in order]
    sorted_blob = b"".join(out)
    assert len(sorted_blob) == len(blob)
    return sorted_blob


def reference_outputs(out: str, shape: List[int]) -> Dict[str, np.ndarray]:
    """TVM's graph executor on the files just written (not the in-memory build): what DLR must match."""
    lib = tvm.runtime.load_module(os.path.join(out, "compiled.so"))
    with open(os.path.join(out, "compiled_model.json")) as f:
        gm = graph_executor.create(f.read(), lib, tvm.cpu())
    with open(os.path.join(out, "compiled.params"), "rb") as f:
        gm.load_params(f.read())
    gm.set_input("data", pattern_image(tuple(shape)))
    gm.run()
    return {"output_{}".format(i): gm.get_output(i).numpy() for i in range(gm.get_num_outputs())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", choices=("mxnet", "onnx-demo"))
    ap.add_argument("input", help="gluoncv_export.py output directory, or a demo model.onnx")
    ap.add_argument("out")
    ap.add_argument("--arch", choices=sorted(TARGETS), default="x86_64")
    args = ap.parse_args()
    if args.source == "mxnet":
        mod, params, shape, info = from_gluoncv_export(args.input)
        framework = "mxnet"
    else:
        mod, params, shape, info = from_demo_onnx(args.input)
        framework = "onnx"
    print(json.dumps(write_neo_dir(mod, params, shape, args.out, args.arch, framework, info)))


if __name__ == "__main__":
    main()
