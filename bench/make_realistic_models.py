#!/usr/bin/env python3
"""Write two realistic-size detectors with random weights for bench/perf.py (dev-only: PyTorch).

    python bench/make_realistic_models.py            # both, into bench/realistic/ (git-ignored)
    python bench/make_realistic_models.py --only ssd512-mobilenetv2

* ``ssd512-mobilenetv2``: an SSD at 512x512 on a MobileNetV2 (width 1.0) backbone, features at
  strides 16 and 32 plus four extra layers, 6 anchors a cell, 80 classes + background, as GluonCV's
  ssd_512_mobilenet1.0 family (about 7.5 GFLOPs, counted and printed);
* ``yolov3-darknet53-512``: YOLOv3 with the DarkNet-53 backbone at 512x512, 80 classes (about 100
  GFLOPs: 65.9 at 416).

Both take and give what the bundled demos do, the GluonCV I/O contract: ``data`` float32
(1, 512, 512, 3) RGB 0..255, ``ids``/``scores``/``bboxes`` (1, 100, k) after NMS (the export and
the NMS graph are scripts/train_demo_detectors.py's). Weights are random (the score biases start
at "nothing here", as trained detectors mostly answer): only their cost is real, so the bench
measures time, memory and the service's overhead on them, never accuracy. The files are ~60 MB
and ~240 MB, so they are made here, not committed.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "scripts"))
import train_demo_detectors as tdd  # noqa: E402

OUT = os.path.join(HERE, "realistic")
NC = 80
SIZE = 512


def cbr(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: str = "relu6") -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act == "relu6":
        layers.append(nn.ReLU6(inplace=True))
    elif act == "leaky":
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


def _normalise(data: torch.Tensor) -> torch.Tensor:
    return (data.permute(0, 3, 1, 2) - 127.5) * (1.0 / 64.0)


# --------------------------------------------------------------------------- SSD512 MobileNetV2

class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.expand = cbr(cin, hidden, 1) if expand != 1 else nn.Identity()
        self.rest = nn.Sequential(cbr(hidden, hidden, 3, stride, groups=hidden), cbr(hidden, cout, 1, act=""))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.rest(self.expand(x))
        return x + y if self.residual else y


class MobileNetV2SSD(nn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))
    NA = 6

    def __init__(self):
        super().__init__()
        blocks: List[nn.Module] = [cbr(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.to16 = nn.Sequential(*blocks[:14])   # stride 16, 96 channels
        self.to32 = nn.Sequential(*blocks[14:], cbr(320, 1280, 1))  # stride 32, 1280 channels
        self.extras = nn.ModuleList(nn.Sequential(cbr(a, b // 2, 1), cbr(b // 2, b, 3, 2))
                                    for a, b in ((1280, 512), (512, 256), (256, 256), (256, 128)))
        channels = (96, 1280, 512, 256, 256, 128)
        self.heads = nn.ModuleList(nn.Conv2d(c, self.NA * (NC + 1 + 4), 3, 1, 1) for c in channels)
        for h in self.heads:
            b = h.bias.data.view(self.NA, NC + 5)
            b.zero_()
            b[:, 0] = math.log(100.0 * NC)  # background, as an untrained-but-sane SSD would say
        self.register_buffer("anchors", self._anchors(), persistent=False)

    def _anchors(self) -> torch.Tensor:
        out = []
        for i, stride in enumerate((16, 32, 64, 128, 256, 512)):
            n = int(math.ceil(SIZE / stride))
            s = 0.1 * SIZE * (1 + i)
            ws = [s, s * 1.4, s * 1.4, s / 1.4, s * 1.7, s / 1.7]
            hs = [s, s * 1.4, s / 1.4, s * 1.4, s / 1.7, s * 1.7]
            wh = torch.tensor(list(zip(ws, hs)))
            c = (torch.arange(n, dtype=torch.float32) + 0.5) * stride
            cy, cx = torch.meshgrid(c, c, indexing="ij")
            ctr = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, self.NA, 2)
            out.append(torch.cat([ctr, wh.expand(n * n, -1, -1)], -1).reshape(-1, 4))
        return torch.cat(out)

    def forward(self, data):
        f16 = self.to16(_normalise(data))
        feats = [f16, self.to32(f16)]
        for e in self.extras:
            feats.append(e(feats[-1]))
        p = torch.cat([h(f).permute(0, 2, 3, 1).reshape(f.shape[0], -1, NC + 5)
                       for f, h in zip(feats, self.heads)], 1)
        return p[..., :NC + 1], p[..., NC + 1:]

    # The demo SSD's decoding (anchors in pixels, variances 0.1 and 0.2, softmax).
    VAR = tdd.SSD.VAR
    decode = tdd.SSD.decode


# --------------------------------------------------------------------------- YOLOv3 DarkNet-53

class DarkResidual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(cbr(c, c // 2, 1, act="leaky"), cbr(c // 2, c, 3, act="leaky"))

    def forward(self, x):
        return x + self.body(x)


class YOLOv3DarkNet53(nn.Module):
    ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))

    def __init__(self):
        super().__init__()
        def stage(cin: int, cout: int, n: int) -> nn.Sequential:
            return nn.Sequential(cbr(cin, cout, 3, 2, act="leaky"), *[DarkResidual(cout) for _ in range(n)])
        self.stem = cbr(3, 32, 3, act="leaky")
        self.s2, self.s4, self.s8 = stage(32, 64, 1), stage(64, 128, 2), stage(128, 256, 8)
        self.s16, self.s32 = stage(256, 512, 8), stage(512, 1024, 4)
        no = 3 * (5 + NC)

        def head(cin: int, c: int) -> nn.Sequential:
            return nn.Sequential(cbr(cin, c, 1, act="leaky"), cbr(c, 2 * c, 3, act="leaky"),
                                 cbr(2 * c, c, 1, act="leaky"), cbr(c, 2 * c, 3, act="leaky"),
                                 cbr(2 * c, c, 1, act="leaky"))
        self.h32, self.h16, self.h8 = head(1024, 512), head(512 + 256, 256), head(256 + 128, 128)
        self.o32 = nn.Sequential(cbr(512, 1024, 3, act="leaky"), nn.Conv2d(1024, no, 1))
        self.o16 = nn.Sequential(cbr(256, 512, 3, act="leaky"), nn.Conv2d(512, no, 1))
        self.o8 = nn.Sequential(cbr(128, 256, 3, act="leaky"), nn.Conv2d(256, no, 1))
        self.l32, self.l16 = cbr(512, 256, 1, act="leaky"), cbr(256, 128, 1, act="leaky")
        for o in (self.o8, self.o16, self.o32):
            b = o[-1].bias.data.view(3, 5 + NC)
            b.zero_()
            b[:, 4] = -6.0  # objectness: "nothing here"
            b[:, 5:] = -2.0
        self.register_buffer("anchor_wh", torch.tensor(self.ANCHORS, dtype=torch.float32).reshape(3, 3, 2))

    def forward(self, data):
        c8 = self.s8(self.s4(self.s2(self.stem(_normalise(data)))))
        c16 = self.s16(c8)
        c32 = self.s32(c16)
        h32 = self.h32(c32)
        h16 = self.h16(torch.cat([F.interpolate(self.l32(h32), scale_factor=2.0, mode="nearest"), c16], 1))
        h8 = self.h8(torch.cat([F.interpolate(self.l16(h16), scale_factor=2.0, mode="nearest"), c8], 1))
        outs = []
        for o in (self.o8(h8), self.o16(h16), self.o32(h32)):
            outs.append(o.permute(0, 2, 3, 1).reshape(o.shape[0], -1, 5 + NC))
        return torch.cat(outs, 1)

    # The demo YOLOv3's decoding (strides 8, 16, 32, three anchors each).
    STRIDES = tdd.YOLOv3.STRIDES
    _priors = tdd.YOLOv3._priors
    decode = tdd.YOLOv3.decode


# --------------------------------------------------------------------------- making them

def gflops(model: nn.Module) -> float:
    """Multiply-adds x 2 of the convolutions for one 512x512 image."""
    total = [0]

    def hook(module: nn.Conv2d, inputs, output) -> None:
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total[0] += 2 * k * output.numel()

    model.eval()
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, SIZE, SIZE, 3))
    for h in handles:
        h.remove()
    return total[0] / 1e9


MODELS = {"ssd512-mobilenetv2": MobileNetV2SSD, "yolov3-darknet53-512": YOLOv3DarkNet53}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(MODELS))
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    for name, cls in MODELS.items():
        if args.only and name != args.only:
            continue
        torch.manual_seed(0)
        model = cls().eval()
        out = os.path.join(args.out, name)
        os.makedirs(out, exist_ok=True)
        tdd.export_onnx(model, os.path.join(out, "model.onnx"))
        with open(os.path.join(out, "labels.txt"), "w") as f:
            f.write("".join("class{}\n".format(i) for i in range(NC)))
        print("{}: {:.1f} GFLOPs, {:.0f} MB -> {}".format(
            name, gflops(model), os.path.getsize(os.path.join(out, "model.onnx")) / 2 ** 20, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
