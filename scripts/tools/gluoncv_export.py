#!/usr/bin/env python3
"""Export small detectors built from GluonCV's own SSD and YOLOv3 classes, the way users export theirs.

Runs in the GluonCV tool venv (`scripts/tools/make-venv.sh gluoncv`), never in the runtime:

    .tools/gluoncv/bin/python scripts/tools/gluoncv_export.py --arch ssd --size 300 --layout HWC --out DIR
    .tools/gluoncv/bin/python scripts/tools/gluoncv_export.py --arch yolo3_darknet53_voc --size 512 --out DIR

Writes DIR/<name>-symbol.json and DIR/<name>-0000.params with
`gluoncv.utils.export_block(prefix, net, preprocess=True, layout='HWC', data_shape=(H, W, 3))`
(input `data` float32 (1, H, W, 3), RGB pixels 0-255, mean/std inside) or, for `--layout CHW`,
`export_block(..., preprocess=None, layout='CHW')`: the bare network, input (1, 3, H, W) already
normalised, which is what a Jetson-style Neo compile of a GluonCV model takes. With `--onnx` it also
writes DIR/model.onnx through `mx.onnx.export_model`.

The networks are tiny (a few conv layers), but the heads, anchor generators, box decoders and
`box_nms` are GluonCV's own, so the exported graphs hold the same operators as the model-zoo
detectors. Weights are random with a fixed seed; no download happens (pretrained weights can't be
fetched here).
"""
from __future__ import annotations

import argparse
import json
import os
import random
from typing import List

import mxnet as mx
import numpy as np
from gluoncv.model_zoo.ssd.ssd import SSD
from gluoncv.model_zoo.yolo.yolo3 import YOLOV3
from gluoncv.utils import export_block
from mxnet.gluon import nn

CLASSES = ["circle", "square", "triangle"]  # the demo detectors' classes, so labels.txt is shared
MEAN = [123.675, 116.28, 103.53]  # GluonCV's default preprocessing (export_block's _DefaultPreprocess)
STD = [58.395, 57.12, 57.375]


def _conv(channels: int, stride: int) -> nn.HybridSequential:
    block = nn.HybridSequential()
    block.add(nn.Conv2D(channels, 3, stride, 1, use_bias=False), nn.BatchNorm(), nn.Activation("relu"))
    return block


class TinyFeatures(nn.HybridBlock):
    """Stride 8, 16 and 32 feature maps, like the base networks GluonCV's SSDs expand."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.stem = nn.HybridSequential()
            for ch in (8, 16, 16):
                self.stem.add(_conv(ch, 2))  # stride 8
            self.down16 = _conv(24, 2)
            self.down32 = _conv(32, 2)

    def hybrid_forward(self, F, x):
        s8 = self.stem(x)
        s16 = self.down16(s8)
        return [s8, s16, self.down32(s16)]


def tiny_features(pretrained: bool = False, ctx=None, root=None, **kwargs) -> TinyFeatures:
    return TinyFeatures()


def build_ssd(size: int) -> SSD:
    # network=None: SSD takes the feature block as is (as gluoncv's ssd_*_custom models do)
    return SSD(network=None, base_size=size, features=tiny_features, num_filters=None,
               sizes=[0.1 * size, 0.3 * size, 0.6 * size, 0.9 * size],
               ratios=[[1, 2, 0.5]] * 3, steps=[8, 16, 32], classes=CLASSES, pretrained=False,
               anchor_alloc_size=-(-size // 8))


def build_yolo3(size: int) -> YOLOV3:
    stages: List[nn.HybridSequential] = []
    for chans in ((8, 16, 16), (24,), (32,)):  # outputs at stride 8, 16, 32
        stage = nn.HybridSequential()
        for ch in chans:
            stage.add(_conv(ch, 2))
        stages.append(stage)
    grid = -(-size // 8)  # stride-8 grid side, rounded up as the convolutions do
    # GluonCV's yolo3_darknet53_voc anchors, in input pixels
    anchors = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
    return YOLOV3(stages, [32, 16, 8], anchors, [8, 16, 32], CLASSES, alloc_size=(grid, grid))


def _fix_ssd_heads(net, seed: int) -> None:
    """Random SSD heads score every anchor 1.0 and give boxes that overflow exp(): near-zero
    predictor weights and random biases keep the scores spread and the boxes finite."""
    rng = np.random.RandomState(seed + 1)
    for name, p in net.collect_params().items():
        if "predictor" not in name:
            continue
        shape = p.shape
        if name.endswith("weight"):
            p.set_data(mx.nd.array(rng.normal(0, 0.02, shape).astype(np.float32)))
        elif name.endswith("bias"):
            p.set_data(mx.nd.array(rng.normal(0, 0.5, shape).astype(np.float32)))


ZOO = ("ssd_512_mobilenet1.0_voc", "ssd_512_resnet50_v1_voc", "yolo3_mobilenet1.0_voc", "yolo3_darknet53_voc")


def build(arch: str, size: int):
    """arch "ssd" / "yolo3": the small networks; a model-zoo name: that full-size network."""
    if arch in ("ssd", "yolo3"):
        return build_ssd(size) if arch == "ssd" else build_yolo3(size)
    from gluoncv import model_zoo
    # pretrained weights can't be fetched here (and must not be): random weights, same graph
    return model_zoo.get_model(arch, pretrained=False, pretrained_base=False)


def export(arch: str, size: int, layout: str, out: str, seed: int, onnx: bool) -> dict:
    os.makedirs(out, exist_ok=True)
    net = build(arch, size)
    mx.random.seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    # the zoo networks keep GluonCV's own default initialisation (Xavier can't do their BN vectors)
    net.initialize(mx.init.Xavier(magnitude=2.0) if arch in ("ssd", "yolo3") else mx.init.Uniform())
    if arch.startswith("ssd"):
        net(mx.nd.zeros((1, 3, size, size)))  # finish deferred init so the heads have shapes
        _fix_ssd_heads(net, seed)
    # (YOLOv3 is exported before its first forward: a forward before export_block breaks it)
    prefix = os.path.join(out, "model")
    if layout == "HWC":
        export_block(prefix, net, preprocess=True, layout="HWC", data_shape=(size, size, 3))
        shape = [1, size, size, 3]
    else:
        export_block(prefix, net, preprocess=None, layout="CHW", data_shape=(3, size, size))
        shape = [1, 3, size, size]
    files = {"symbol": prefix + "-symbol.json", "params": prefix + "-0000.params"}
    if onnx:
        path = os.path.join(out, "model.onnx")
        mx.onnx.export_model(files["symbol"], files["params"], in_shapes=[shape], in_types=[np.float32],
                             onnx_file_path=path)
        files["onnx"] = path
    info = {"arch": arch, "size": size, "layout": layout, "seed": seed, "input_shape": shape,
            "preprocess": layout == "HWC", "classes": list(net.classes),
            "mean": None if layout == "HWC" else MEAN, "std": None if layout == "HWC" else STD,
            "files": {k: os.path.basename(v) for k, v in files.items()}}
    with open(os.path.join(out, "export.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("ssd", "yolo3") + ZOO, required=True,
                    help="ssd/yolo3: the small test networks; a zoo name: the full-size model (slow)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--layout", choices=("HWC", "CHW"), default="HWC")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--onnx", action="store_true", help="also write model.onnx (mx.onnx.export_model)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    print(json.dumps(export(args.arch, args.size, args.layout, args.out, args.seed, args.onnx)))


if __name__ == "__main__":
    main()
