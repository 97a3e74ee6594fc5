#!/usr/bin/env python3
"""Export small detectors built from torchvision's own SSD and RetinaNet classes to ONNX.

Runs in the Ultralytics tool venv (it has torch and torchvision), never in the runtime:

    .tools/ultralytics/bin/python scripts/tools/torchvision_export.py --arch ssd --size 320 --out DIR

writes DIR/model.onnx the way torchvision documents it (`torch.onnx.export(model, [image])`, one
input image (3, H, W) RGB 0..1, outputs boxes (N, 4) xyxy in input pixels, scores (N), labels (N)
int64 with 0 = background), DIR/labels.txt (`__background__` first, as torchvision's category
lists) and DIR/reference.npz: torchvision's own eager outputs on a fixed picture, which ONNX
Runtime must reproduce (tests/model/test_real_artefacts.py).

The backbones are a few conv layers; anchor generators, box coders, heads, the internal
GeneralizedRCNNTransform (resize + normalise) and the batched NMS are torchvision's. Random
weights, fixed seed; nothing is downloaded. The torchvision from PyPI cannot load its C++ ops
beside the CPU-only torch wheel: see ultralytics_export.py for the NMS op this script registers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pattern import pattern_image  # noqa: E402
from ultralytics_export import _torchvision_without_its_cuda_ops  # noqa: E402

CLASSES = ["__background__", "circle", "square", "triangle"]
RETINANET_BIAS, SSD_LOGIT_GAIN = -3.5, 0.3


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    """Stride 8, 16 and 32 features as an OrderedDict, as torchvision's detection heads take them."""

    def __init__(self, channels=(16, 24, 32), same_width: bool = False):
        super().__init__()
        self.stem = nn.Sequential(_conv(3, 8, 2), _conv(8, 16, 2), _conv(16, channels[0], 2))
        self.down16 = _conv(channels[0], channels[1], 2)
        self.down32 = _conv(channels[1], channels[2], 2)
        self.out_channels = channels[0] if same_width else list(channels)

    def forward(self, x):
        s8 = self.stem(x)
        s16 = self.down16(s8)
        return OrderedDict([("0", s8), ("1", s16), ("2", self.down32(s16))])


def build(arch: str, size: int) -> nn.Module:
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
    if arch == "ssd":
        anchors = DefaultBoxGenerator([[2], [2, 3], [2]], min_ratio=0.2, max_ratio=0.9)
        return SSD(TinyBackbone(), anchors, (size, size), num_classes=len(CLASSES),
                   score_thresh=0.2, detections_per_img=100)
    anchors = AnchorGenerator(sizes=((32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 3)
    return RetinaNet(TinyBackbone((24, 24, 24), same_width=True), num_classes=len(CLASSES),
                     min_size=size, max_size=size, anchor_generator=anchors,
                     score_thresh=0.2, detections_per_img=100)


def export(arch: str, size: int, seed: int, out: str) -> dict:
    _torchvision_without_its_cuda_ops()
    torch.manual_seed(seed)
    model = build(arch, size).eval()
    with torch.no_grad():
        # He-normal everywhere (torchvision's head init, std 0.01, leaves random features at ~0)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if arch == "retinanet":  # its class prior starts every score at 0.01: move it up
            bias = model.head.classification_head.cls_logits.bias
            bias.fill_(RETINANET_BIAS)
            bias[0::len(CLASSES)] = -20.0  # (anchor, class) channels: class 0 is the background
        else:  # softmax over few classes saturates at 1.0 with He-normal logits: soften them
            for conv in model.head.classification_head.modules():
                if isinstance(conv, nn.Conv2d):
                    conv.weight.mul_(SSD_LOGIT_GAIN)
    os.makedirs(out, exist_ok=True)
    image = torch.from_numpy(pattern_image((1, 3, size, size))[0] / 255.0)
    with torch.no_grad():
        ref = model([image])[0]
    path = os.path.join(out, "model.onnx")
    torch.onnx.export(model, ([image],), path, opset_version=17, dynamo=False,
                      input_names=["image"], output_names=["boxes", "scores", "labels"])
    np.savez_compressed(os.path.join(out, "reference.npz"),
                        **{k: ref[k].numpy() for k in ("boxes", "scores", "labels")})
    with open(os.path.join(out, "labels.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    return {"arch": arch, "size": size, "seed": seed, "detections": int(len(ref["scores"]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("ssd", "retinanet"), required=True)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    print(json.dumps(export(args.arch, args.size, args.seed, args.out)))


if __name__ == "__main__":
    main()
