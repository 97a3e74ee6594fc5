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
