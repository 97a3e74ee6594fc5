"""Tiny ONNX detectors written with onnx.helper, for backend and engine tests."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BOX = [64.0, 128.0, 256.0, 384.0]  # model-input pixels of a 512x512 input


def red_detector(path: str, size: int = 512, layout: str = "NHWC", outputs=("ids", "scores", "bboxes")) -> str:
    """Reports one class-0 box at BOX whose score is the mean of channel 0 / 255, plus one padding row."""
    shape = [1, size, size, 3] if layout == "NHWC" else [1, 3, size, size]
    axis = 3 if layout == "NHWC" else 1
    const = lambda name, value: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, np.float32), name))
    nodes = [
        helper.make_node("Constant", [], ["c0"], value=numpy_helper.from_array(np.array([0], np.int64), "c0")),
        helper.make_node("Constant", [], ["c1"], value=numpy_helper.from_array(np.array([1], np.int64), "c1")),
        helper.make_node("Constant", [], ["ax"], value=numpy_helper.from_array(np.array([axis], np.int64), "ax")),
        helper.make_node("Slice", ["data", "c0", "c1", "ax"], ["red"]),
        helper.make_node("ReduceMean", ["red"], ["mean"], keepdims=0),
        const("k255", 255.0),
        helper.make_node("Div", ["mean", "k255"], ["score"]),
        const("shape111", [1, 1, 1]),
        helper.make_node("Constant", [], ["s111"], value=numpy_helper.from_array(np.array([1, 1, 1], np.int64), "s111")),
        helper.make_node("Reshape", ["score", "s111"], ["score3"]),
        const("pad", [[[-1.0]]]),
        helper.make_node("Concat", ["score3", "pad"], ["scores"], axis=1),
        const("ids", [[[0.0], [-1.0]]]),
        const("bboxes", [[BOX, [-1.0] * 4]]),
    ]
    nodes = [n for n in nodes if n.output[0] != "shape111"]
    outs = {"ids": [1, 2, 1], "scores": [1, 2, 1], "bboxes": [1, 2, 4]}
    graph = helper.make_graph(
        nodes, "red_detector",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, outs[o]) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


# ---- other detector formats -----------------------------------------------------------------
# Each model's score is the mean of the top-left 8x8 patch of its input (all channels), so a
# test sees what the preprocessing fed it (letterbox grey 114, scaling to 0..1); its boxes are
# constants in model-input pixels, so a test sees how they are mapped back to the image.

FORMAT_SIZE = 640
# Boxes (x1, y1, x2, y2) in model-input pixels: the first two overlap (IoU 0.82) with one class,
# the third is the first box with another class, the fourth scores too low.
FORMAT_BOXES = [[100.0, 180.0, 300.0, 380.0], [110.0, 190.0, 310.0, 390.0],
                [100.0, 180.0, 300.0, 380.0], [400.0, 200.0, 500.0, 300.0]]
FORMAT_CLASSES = [1, 1, 2, 0]
FORMAT_SCORE_FACTORS = [1.0, 0.9, 0.8, 0.05]  # times the patch mean
CLASSES = 3


def _patch_score(input_name: str, shape, channels_first: bool):
    """Nodes computing `score` (shape (1,)) = mean of the input's top-left 8x8 patch."""
    rank = len(shape)
    hw_axes = [rank - 2, rank - 1] if channels_first else [rank - 3, rank - 2]
    ints = lambda name, v: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=numpy_helper.from_array(np.array(v, np.int64), name))
    return [
        ints("p_start", [0, 0]), ints("p_end", [8, 8]), ints("p_axes", hw_axes),
        helper.make_node("Slice", [input_name, "p_start", "p_end", "p_axes"], ["patch"]),
        helper.make_node("ReduceMean", ["patch"], ["score0"], keepdims=0),
        ints("one_shape", [1]),
        helper.make_node("Reshape", ["score0", "one_shape"], ["score"]),
    ]


def _const(name, value, dtype=np.float32):
    return helper.make_node("Constant", [], [name],
                            value=numpy_helper.from_array(np.asarray(value, dtype), name))


def _save(nodes, inputs, outputs, path, name):
    graph = helper.make_graph(nodes, name, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _scaled(base, factors, out):
    """out = base + score * factors (constants of one shape)."""
    return [_const(out + "_base", base), _const(out + "_factors", factors),
            helper.make_node("Mul", ["score", out + "_factors"], [out + "_scaled"]),
            helper.make_node("Add", [out + "_base", out + "_scaled"], [out])]


def ultralytics_detector(path: str, kind: str, size: int = FORMAT_SIZE, anchors: int = 8,
                         dynamic: bool = False) -> str:
    """An Ultralytics-shaped export: kind "yolov8" (1, 4+classes, anchors), "yolov5"
    (1, anchors, 5+classes) or "nms" (1, anchors, 6); input `images` (1, 3, size, size)."""
    rows = np.zeros((anchors, 5 + CLASSES), np.float32)  # cx cy w h obj classes...
    factors = np.zeros_like(rows)
    for i, (box, cls, f) in enumerate(zip(FORMAT_BOXES, FORMAT_CLASSES, FORMAT_SCORE_FACTORS)):
        x1, y1, x2, y2 = box
        rows[i, :4] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        factors[i, 5 + cls] = f
    if kind == "yolov8":  # no objectness; (1, 4 + classes, anchors)
        base = np.delete(rows, 4, axis=1).T[np.newaxis]
        fac = np.delete(factors, 4, axis=1).T[np.newaxis]
    elif kind == "yolov5":  # objectness = score factor, class probability 1
        base, fac = rows.copy(), np.zeros_like(factors)
        for i, (cls, f) in enumerate(zip(FORMAT_CLASSES, FORMAT_SCORE_FACTORS)):
            base[i, 5 + cls] = 1.0
            fac[i, 4] = f
        base, fac = base[np.newaxis], fac[np.newaxis]
    else:  # nms: x1 y1 x2 y2 score class, zero rows after the real ones
        base = np.zeros((anchors, 6), np.float32)
        fac = np.zeros_like(base)
        for i, (box, cls, f) in enumerate(zip(FORMAT_BOXES, FORMAT_CLASSES, FORMAT_SCORE_FACTORS)):
            if i == 1:
                continue  # an NMS export has already suppressed the overlapping box
            base[i, :4], base[i, 5], fac[i, 4] = box, cls, f
        base, fac = base[np.newaxis], fac[np.newaxis]
    in_shape = ["batch", 3, "height", "width"] if dynamic else [1, 3, size, size]
    out_shape = list(base.shape)
    if dynamic:
        out_shape[0] = "batch"
        out_shape[2 if kind == "yolov8" else 1] = "anchors"
    nodes = _patch_score("images", in_shape, True) + _scaled(base, fac, "output0")
    return _save(nodes, [helper.make_tensor_value_info("images", TensorProto.FLOAT, in_shape)],
                 [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)],
                 path, "ultralytics_" + kind)


def torchvision_detector(path: str, size: int = 320) -> str:
    """A torchvision-style export: input (3, size, size) 0..1, outputs boxes (N,4), scores (N),
    labels (N) int64; the boxes are FORMAT_BOXES scaled to `size`."""
    k = size / FORMAT_SIZE
    boxes = np.array(FORMAT_BOXES, np.float32) * k
    nodes = _patch_score("image", [3, size, size], True)
    nodes += _scaled(np.zeros(4, np.float32), np.array(FORMAT_SCORE_FACTORS, np.float32), "scores")
    nodes += [_const("boxes", boxes), _const("labels", FORMAT_CLASSES, np.int64)]
    return _save(nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, size, size])],
                 [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4]),
                  helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N"]),
                  helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"])],
                 path, "torchvision_like")


def classifier(path: str, size: int = 224) -> str:
    """Not a detector: one (1, 1000) output."""
    nodes = _patch_score("data", [1, 3, size, size], True)
    nodes += [_const("weights", np.linspace(0, 1, 1000, dtype=np.float32).reshape(1, 1000)),
              helper.make_node("Mul", ["score", "weights"], ["probs"])]
    return _save(nodes, [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])],
                 [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 1000])],
                 path, "classifier")


def failing_detector(path: str, size: int = 256) -> str:
    """Loads (GluonCV-shaped outputs) but fails every run: its score gathers an element far
    outside the input ("indices element out of data bounds" from ONNX Runtime)."""
    nodes = [
        helper.make_node("Flatten", ["data"], ["flat"], axis=0),
        helper.make_node("Constant", [], ["far"],
                         value=numpy_helper.from_array(np.array([[10 ** 9]], np.int64), "far")),
        helper.make_node("Gather", ["flat", "far"], ["picked"], axis=1),  # (1, 1, 1)
        _const("ids", [[[0.0]]]),
        _const("bboxes", [[BOX]]),
        helper.make_node("Identity", ["picked"], ["scores"]),
    ]
    return _save(nodes, [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, size, size, 3])],
                 [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in
                  (("ids", [1, 1, 1]), ("scores", [1, 1, 1]), ("bboxes", [1, 1, 4]))],
                 path, "failing_detector")
