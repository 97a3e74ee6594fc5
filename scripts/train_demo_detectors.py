#!/usr/bin/env python3
"""Train the two bundled demo detectors on synthetic shapes and export them as GluonCV-style ONNX.

Dev-only (needs PyTorch; the service itself never imports this). Examples:

    python scripts/train_demo_detectors.py --arch ssd --out connector/demos/demo-ssd
    python scripts/train_demo_detectors.py --arch yolov3 --out connector/demos/demo-yolov3

The exported graph takes `data` float32 (1, 512, 512, 3), RGB 0..255 (normalisation inside) and
returns `ids` (1, N, 1), `scores` (1, N, 1), `bboxes` (1, N, 4) [xmin, ymin, xmax, ymax] in input
pixels, best first, padded with -1 rows: anchor decoding and per-class NMS are part of the graph.

The engine squashes every picture to 512x512 (no letterbox), so training images come in many
aspect ratios and are squashed the same way (cv2.resize INTER_LINEAR on RGB): a circle in a
1280x720 photo is an ellipse to the network, and it has to be seen as such during training.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import time
import warnings
from typing import List, Tuple

import cv2
import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes_dataset as sd  # noqa: E402

SIZE = 512
NC = len(sd.CLASSES)
MAX_DETS = 100
NMS_IOU = 0.45
SCORE_MIN = 0.05  # below this a detection is noise for these models; keeps the service output short


# --------------------------------------------------------------------------- data

def _render(job: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    seed, i = job
    rng = np.random.default_rng([seed, i])  # one stream per image: same data whatever the worker count
    w, h = sd.random_size(rng)
    img, boxes = sd.make_sample(rng, w, h)
    if rng.random() < 0.5:  # the service is fed JPEGs
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 97))])
        img = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return sd.resize_sample(img, boxes, SIZE)


def make_training_set(seed: int, n: int, workers: int) -> Tuple[np.ndarray, List[np.ndarray]]:
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    boxes: List[np.ndarray] = []
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for i, (img, b) in enumerate(pool.imap(_render, [(seed, i) for i in range(n)], chunksize=8)):
            images[i] = img
            boxes.append(b)
    return images, boxes


def augment(images: np.ndarray, boxes: List[np.ndarray], rng: np.random.Generator, crop: int):
    """Crop, flips, colour channel shuffles, brightness/contrast: none of them changes a class.

    Training on crop x crop windows of the 512x512 input keeps every object at the pixel scale it
    has at inference time (the network is fully convolutional) for a fraction of the compute.
    Objects cut by the window come back with class -1: neither object nor background.
    """
    x = np.empty((len(images), crop, crop, 3), np.float32)
    out_boxes = []
    for k in range(len(images)):
        x0, y0 = (int(v) for v in rng.integers(0, SIZE - crop + 1, 2))
        im = images[k, y0:y0 + crop, x0:x0 + crop]
        b = boxes[k].copy()
        b[:, [1, 3]] -= x0
        b[:, [2, 4]] -= y0
        inside = (b[:, 1] >= -1) & (b[:, 2] >= -1) & (b[:, 3] <= crop + 1) & (b[:, 4] <= crop + 1)
        seen = (b[:, 1] < crop) & (b[:, 2] < crop) & (b[:, 3] > 0) & (b[:, 4] > 0)
        b = b[seen]
        b[~inside[seen], 0] = -1
        b[:, 1:] = np.clip(b[:, 1:], 0, crop)
        if rng.random() < 0.5:
            im = im[:, ::-1]
            b[:, [1, 3]] = crop - b[:, [3, 1]]
        if rng.random() < 0.5:
            im = im[::-1]
            b[:, [2, 4]] = crop - b[:, [4, 2]]
        x[k] = im[..., rng.permutation(3)]
        x[k] = (x[k] - 128.0) * rng.uniform(0.7, 1.3) + 128.0 + rng.uniform(-30, 30)
        out_boxes.append(b)
    return torch.from_numpy(np.clip(x, 0, 255)), out_boxes


def _ignored(b: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Predictions whose cell centre lies on an object the crop cut (class -1 rows of b)."""
    cut = b[b[:, 0] < 0, 1:]
    if not len(cut):
        return torch.zeros(len(centres), dtype=torch.bool, device=centres.device)
    c = centres[:, None]
    return ((c[..., 0] >= cut[:, 0]) & (c[..., 0] <= cut[:, 2]) & (c[..., 1] >= cut[:, 1]) & (c[..., 1] <= cut[:, 3])).any(1)


# --------------------------------------------------------------------------- networks

def conv(cin: int, cout: int, k: int = 3, s: int = 1, leaky: bool = False) -> nn.Sequential:
    act = nn.LeakyReLU(0.1, inplace=True) if leaky else nn.ReLU(inplace=True)
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), act)


class Backbone(nn.Module):
    """Plain conv stack; returns stride 8, 16 and 32 features (48, 96, 128 channels)."""

    def __init__(self, leaky: bool = False):
        super().__init__()
        # few channels at full and half resolution: on a CPU those layers cost the most
        self.s8 = nn.Sequential(conv(3, 8, s=2, leaky=leaky), conv(8, 24, s=2, leaky=leaky),
                                conv(24, 48, s=2, leaky=leaky), conv(48, 48, leaky=leaky))
        self.s16 = nn.Sequential(conv(48, 96, s=2, leaky=leaky), conv(96, 96, leaky=leaky))
        self.s32 = nn.Sequential(conv(96, 128, s=2, leaky=leaky), conv(128, 128, leaky=leaky))

    def forward(self, data: torch.Tensor):
        # NHWC 0..255 in, as the engine feeds it; the normalisation lives in the exported graph
        x = (data.permute(0, 3, 1, 2) - 127.5) * (1.0 / 64.0)
        c8 = self.s8(x)
        c16 = self.s16(c8)
        return c8, c16, self.s32(c16)


class SSD(nn.Module):
    """SSD: five feature maps (strides 8..128), 4 default boxes per cell, softmax over 3 + background."""
    STRIDES = (8, 16, 32, 64, 128)
    VAR = (0.1, 0.2)

    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.extra = nn.ModuleList([nn.Sequential(conv(128, 48, 1), conv(48, 96, s=2)),
                                    nn.Sequential(conv(96, 48, 1), conv(48, 96, s=2))])
        self.na = 4
        self.heads = nn.ModuleList(nn.Conv2d(c, self.na * (NC + 1 + 4), 3, 1, 1) for c in (48, 96, 128, 96, 96))
        self.register_buffer("anchors", self.make_anchors(SIZE), persistent=False)
        for h in self.heads:  # start out sure it is all background, as the data mostly is
            b = h.bias.data.view(self.na, NC + 5)
            b.zero_()
            b[:, 0] = math.log(100.0 * NC)

    @classmethod
    def make_anchors(cls, size: int) -> torch.Tensor:
        """(A, 4) cx, cy, w, h in pixels; sizes 16..256 (x sqrt2) cover boxes of ~11..360 px."""
        out = []
        for stride in cls.STRIDES:
            n = int(math.ceil(size / stride))
            s = 2.0 * stride
            r = math.sqrt(2.0)
            wh = torch.tensor([[s, s], [s * r, s * r], [s * r, s / r], [s / r, s * r]])
            c = (torch.arange(n, dtype=torch.float32) + 0.5) * stride
            cy, cx = torch.meshgrid(c, c, indexing="ij")
            ctr = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, len(wh), 2)
            out.append(torch.cat([ctr, wh.expand(n * n, -1, -1)], -1).reshape(-1, 4))
        return torch.cat(out)

    def forward(self, data):
        c8, c16, c32 = self.backbone(data)
        feats = [c8, c16, c32]
        for e in self.extra:
            feats.append(e(feats[-1]))
        conf, loc = [], []
        for f, h in zip(feats, self.heads):
            p = h(f).permute(0, 2, 3, 1).reshape(f.shape[0], -1, NC + 5)
            conf.append(p[..., :NC + 1])
            loc.append(p[..., NC + 1:])
        return torch.cat(conf, 1), torch.cat(loc, 1)

    def decode(self, out):
        conf, loc = out
        a = self.anchors
        xy = a[:, :2] + loc[..., :2] * self.VAR[0] * a[:, 2:]
        wh = a[:, 2:] * torch.exp(torch.clamp(loc[..., 2:] * self.VAR[1], max=4.0))
        return torch.cat([xy - wh / 2, xy + wh / 2], -1), F.softmax(conf, -1)[..., 1:]

    def loss(self, out, boxes: List[torch.Tensor], size: int):
        conf, loc = out
        a = self.anchors if size == SIZE else self.make_anchors(size).to(conf.device)
        a_xyxy = torch.cat([a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2], 1)
        labels = torch.zeros(conf.shape[:2], dtype=torch.long, device=conf.device)
        ignore = torch.zeros(conf.shape[:2], dtype=torch.bool, device=conf.device)
        targets = torch.zeros_like(loc)
        for i, b in enumerate(boxes):
            ignore[i] = _ignored(b, a[:, :2])
            b = b[b[:, 0] >= 0]
            if not len(b):
                continue
            iou = box_iou(b[:, 1:], a_xyxy)  # (G, A)
            best_iou, best_gt = iou.max(0)
            best_gt[iou.argmax(1)] = torch.arange(len(b), device=b.device)  # every object gets an anchor
            best_iou[iou.argmax(1)] = 1.0
            pos = best_iou >= 0.5
            g = b[best_gt]
            labels[i, pos] = g[pos, 0].long() + 1
            gxy, gwh = (g[:, 1:3] + g[:, 3:5]) / 2, (g[:, 3:5] - g[:, 1:3]).clamp(min=1.0)
            targets[i] = torch.cat([(gxy - a[:, :2]) / a[:, 2:] / self.VAR[0],
                                    torch.log(gwh / a[:, 2:]) / self.VAR[1]], 1)
        pos = labels > 0
        npos = max(1, int(pos.sum()))
        ce = F.cross_entropy(conf.reshape(-1, NC + 1), labels.reshape(-1), reduction="none").reshape(labels.shape)
        # hard negative mining: the 3x hardest background anchors per image (some even without objects)
        neg_ce = ce.detach().clone()
        neg_ce[pos | ignore] = -1.0
        rank = neg_ce.argsort(1, descending=True).argsort(1)
        nneg = (3 * pos.sum(1, keepdim=True)).clamp(min=16)
        neg = (rank < nneg) & ~pos & ~ignore
        loss_cls = ce[pos | neg].sum() / npos
        loss_box = F.smooth_l1_loss(loc[pos], targets[pos], reduction="sum") / npos
        return loss_cls + loss_box, {"cls": loss_cls.item(), "box": loss_box.item()}


class YOLOv3(nn.Module):
    """YOLOv3: heads at strides 32, 16, 8 joined by upsample+concat, 3 anchors each, sigmoid scores."""
    STRIDES = (8, 16, 32)

    def __init__(self, anchors: np.ndarray):
        super().__init__()
        self.backbone = Backbone(leaky=True)
        self.register_buffer("anchor_wh", torch.as_tensor(anchors, dtype=torch.float32).reshape(3, 3, 2))
        no = 3 * (5 + NC)
        self.head32 = nn.Sequential(conv(128, 64, 1, leaky=True), conv(64, 128, leaky=True))
        self.out32 = nn.Conv2d(128, no, 1)
        self.lat32 = conv(128, 48, 1, leaky=True)
        self.head16 = nn.Sequential(conv(48 + 96, 64, 1, leaky=True), conv(64, 96, leaky=True))
        self.out16 = nn.Conv2d(96, no, 1)
        self.lat16 = conv(96, 32, 1, leaky=True)
        self.head8 = nn.Sequential(conv(32 + 48, 32, 1, leaky=True), conv(32, 48, leaky=True))
        self.out8 = nn.Conv2d(48, no, 1)
        for o in (self.out8, self.out16, self.out32):  # objects are rare: start near p(obj) = 0.01
            b = o.bias.data.view(3, 5 + NC)
            b.zero_()
            b[:, 4] = -4.6
            b[:, 5:] = -1.0

    def forward(self, data):
        c8, c16, c32 = self.backbone(data)
        h32 = self.head32(c32)
        h16 = self.head16(torch.cat([F.interpolate(self.lat32(h32), scale_factor=2.0, mode="nearest"), c16], 1))
        h8 = self.head8(torch.cat([F.interpolate(self.lat16(h16), scale_factor=2.0, mode="nearest"), c8], 1))
        outs = []
        for o in (self.out8(h8), self.out16(h16), self.out32(h32)):
            outs.append(o.permute(0, 2, 3, 1).reshape(o.shape[0], -1, 5 + NC))  # (cell, anchor) order
        return torch.cat(outs, 1)

    def _priors(self, size: int):
        """Per prediction (forward's order: level, row, column, anchor): cell x, y, stride, anchor w, h."""
        out = []
        for lvl, s in enumerate(self.STRIDES):
            n = size // s
            cy, cx = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32),
                                    indexing="ij")
            cell = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, 3, 2).reshape(-1, 2)
            wh = self.anchor_wh[lvl].cpu().repeat(n * n, 1)
            out.append(torch.cat([cell, torch.full((n * n * 3, 1), float(s)), wh], 1))
        return torch.cat(out).to(self.anchor_wh.device)

    def decode(self, p, size: int = SIZE):
        pri = self._priors(size)
        xy = (torch.sigmoid(p[..., :2]) + pri[:, :2]) * pri[:, 2:3]
        wh = pri[:, 3:] * torch.exp(torch.clamp(p[..., 2:4], max=4.0))
        scores = torch.sigmoid(p[..., 4:5]) * torch.sigmoid(p[..., 5:])
        return torch.cat([xy - wh / 2, xy + wh / 2], -1), scores

    def loss(self, p, boxes: List[torch.Tensor], size: int):
        dev = p.device
        B, A = p.shape[:2]
        pri = self._priors(size)
        with torch.no_grad():
            pred_boxes, _ = self.decode(p.detach(), size)
        ignore = torch.zeros(B, A, dtype=torch.bool, device=dev)
        # targets are built in numpy: the ground truth is small and lives on the host anyway
        strides = np.array(self.STRIDES)
        offsets = np.cumsum([0] + [(size // s) ** 2 * 3 for s in self.STRIDES])
        all_wh = self.anchor_wh.reshape(9, 2).cpu().numpy()
        tb, ta, txy, twh, tcls, tw = [], [], [], [], [], []
        for i, b in enumerate(boxes):
            ignore[i] = _ignored(b, (pri[:, :2] + 0.5) * pri[:, 2:3])
            b = b[b[:, 0] >= 0]
            if not len(b):
                continue
            # predictions already overlapping an object are not punished as background (YOLOv3's ignore)
            ignore[i] |= box_iou(b[:, 1:], pred_boxes[i]).max(0)[0] > 0.6
            bn = b.cpu().numpy().astype(np.float64)
            gxy, gwh = (bn[:, 1:3] + bn[:, 3:5]) / 2, np.maximum(bn[:, 3:5] - bn[:, 1:3], 1.0)
            inter = np.minimum(gwh[:, None], all_wh[None]).prod(2)
            wh_iou = inter / (gwh.prod(1)[:, None] + all_wh.prod(1)[None] - inter)  # (G, 9)
            # the best anchor, plus any other that fits well: more positives, faster training
            g, k = np.nonzero((wh_iou > 0.5) | (wh_iou == wh_iou.max(1, keepdims=True)))
            lvl, j = k // 3, k % 3
            st = strides[lvl]
            n = size // st
            cell = np.minimum((gxy[g] / st[:, None]).astype(np.int64), (n - 1)[:, None])
            tb.append(np.full(len(g), i))
            ta.append(offsets[lvl] + (cell[:, 1] * n + cell[:, 0]) * 3 + j)
            txy.append(gxy[g] / st[:, None] - cell)
            twh.append(np.log(gwh[g] / all_wh[k]))
            tcls.append(bn[g, 0].astype(np.int64))
            tw.append(2.0 - gwh[g].prod(1) / SIZE ** 2)  # small boxes count more, as in YOLOv3
        obj_t = torch.zeros(B, A, device=dev)
        if tb:
            ib, ia = (torch.as_tensor(np.concatenate(v), device=dev) for v in (tb, ta))
            obj_t[ib, ia] = 1.0
            ignore[ib, ia] = False
        loss_obj = F.binary_cross_entropy_with_logits(p[..., 4], obj_t, reduction="none")[~ignore].sum() / B
        if tb:
            pp = p[ib, ia]
            t_wh = torch.as_tensor(np.concatenate(twh), dtype=torch.float32, device=dev)
            t_xy = torch.as_tensor(np.concatenate(txy), dtype=torch.float32, device=dev).clamp(0, 1)
            w = torch.as_tensor(np.concatenate(tw), dtype=torch.float32, device=dev)[:, None]
            loss_box = (w * (F.binary_cross_entropy_with_logits(pp[:, :2], t_xy, reduction="none")
                             + F.smooth_l1_loss(pp[:, 2:4], t_wh, reduction="none"))).sum() / B
            cls_t = F.one_hot(torch.as_tensor(np.concatenate(tcls), device=dev), NC).float()
            loss_cls = F.binary_cross_entropy_with_logits(pp[:, 5:], cls_t, reduction="sum") / B
        else:
            loss_box = loss_cls = p.sum() * 0.0
        return loss_obj + loss_box + loss_cls, {"obj": loss_obj.item(), "box": loss_box.item(),
                                                "cls": loss_cls.item()}


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area_a[:, None] + area_b[None] - inter + 1e-9)


def kmeans_anchors(boxes: List[np.ndarray], k: int = 9, seed: int = 0) -> np.ndarray:
    """YOLO anchors: k-means of box sizes with 1 - IoU as the distance, sorted by area."""
    wh = np.concatenate([b[:, 3:5] - b[:, 1:3] for b in boxes if len(b)])
    rng = np.random.default_rng(seed)
    centres = wh[np.argsort(wh.prod(1))[np.linspace(0, len(wh) - 1, k).astype(int)]]
    for _ in range(100):
        inter = np.minimum(wh[:, None], centres[None]).prod(2)
        iou = inter / (wh.prod(1)[:, None] + centres.prod(1)[None] - inter)
        assign = iou.argmax(1)
        new = np.array([np.median(wh[assign == j], 0) if np.any(assign == j) else wh[rng.integers(len(wh))]
                        for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return centres[np.argsort(centres.prod(1))].astype(np.float32)


# --------------------------------------------------------------------------- export

class Exported(nn.Module):
    def __init__(self, det: nn.Module):
        super().__init__()
        self.det = det

    def forward(self, data):
        return self.det.decode(self.det(data))


def _append_nms(model: onnx.ModelProto) -> onnx.ModelProto:
    """boxes (1, A, 4) + scores (1, A, C) -> GluonCV-style ids/scores/bboxes with per-class NMS."""
    g = model.graph
    boxes_in, scores_in = g.output[0].name, g.output[1].name
    del g.output[:]
    c = [numpy_helper.from_array(np.array(v, dt), name) for name, v, dt in (
        ("pp_max", [MAX_DETS], np.int64), ("pp_iou", [NMS_IOU], np.float32), ("pp_thr", [SCORE_MIN], np.float32),
        ("pp_ax0", [0], np.int64), ("pp_ax1", [1], np.int64), ("pp_ax2", [2], np.int64), ("pp_c0", [0], np.int64), ("pp_c1", [1], np.int64),
        ("pp_c2", [2], np.int64), ("pp_c3", [3], np.int64), ("pp_c6", [6], np.int64), ("pp_flat", [-1], np.int64),
        ("pp_pad", np.full((MAX_DETS, 6), -1.0), np.float32))]
    g.initializer.extend(c)
    N = helper.make_node
    g.node.extend([
        N("Transpose", [scores_in], ["pp_st"], perm=[0, 2, 1]),  # (1, C, A)
        N("NonMaxSuppression", [boxes_in, "pp_st", "pp_max", "pp_iou", "pp_thr"], ["pp_sel"]),  # (K, 3)
        N("Slice", ["pp_sel", "pp_c1", "pp_c2", "pp_ax1"], ["pp_selc"]),
        N("Slice", ["pp_sel", "pp_c2", "pp_c3", "pp_ax1"], ["pp_selb"]),
        N("Squeeze", ["pp_selc", "pp_ax1"], ["pp_cls"]),
        N("Squeeze", ["pp_selb", "pp_ax1"], ["pp_box"]),
        N("Shape", [boxes_in], ["pp_bshape"]),
        N("Slice", ["pp_bshape", "pp_c1", "pp_c2", "pp_ax0"], ["pp_na"]),
        N("Mul", ["pp_cls", "pp_na"], ["pp_off"]),
        N("Add", ["pp_off", "pp_box"], ["pp_flatidx"]),
        N("Reshape", ["pp_st", "pp_flat"], ["pp_sflat"]),
        N("Gather", ["pp_sflat", "pp_flatidx"], ["pp_s"]),  # (K,)
        N("Squeeze", [boxes_in, "pp_ax0"], ["pp_b2"]),
        N("Gather", ["pp_b2", "pp_box"], ["pp_bk"], axis=0),  # (K, 4)
        N("Shape", ["pp_s"], ["pp_k"]),
        N("Min", ["pp_k", "pp_max"], ["pp_topk"]),
        N("TopK", ["pp_s", "pp_topk"], ["pp_sv", "pp_si"], axis=0, largest=1, sorted=1),
        N("Gather", ["pp_cls", "pp_si"], ["pp_clss"]),
        N("Cast", ["pp_clss"], ["pp_clsf"], to=TensorProto.FLOAT),
        N("Unsqueeze", ["pp_clsf", "pp_ax1"], ["pp_clsc"]),
        N("Unsqueeze", ["pp_sv", "pp_ax1"], ["pp_svc"]),
        N("Gather", ["pp_bk", "pp_si"], ["pp_bs"], axis=0),
        N("Concat", ["pp_clsc", "pp_svc", "pp_bs"], ["pp_rows"], axis=1),  # (k, 6)
        N("Concat", ["pp_rows", "pp_pad"], ["pp_padded"], axis=0),
        N("Slice", ["pp_padded", "pp_c0", "pp_max", "pp_ax0"], ["pp_top"]),  # (N, 6)
        N("Unsqueeze", ["pp_top", "pp_ax0"], ["pp_out"]),  # (1, N, 6)
        N("Slice", ["pp_out", "pp_c0", "pp_c1", "pp_ax2"], ["ids"]),
        N("Slice", ["pp_out", "pp_c1", "pp_c2", "pp_ax2"], ["scores"]),
        N("Slice", ["pp_out", "pp_c2", "pp_c6", "pp_ax2"], ["bboxes"]),
    ])
    for name, k in (("ids", 1), ("scores", 1), ("bboxes", 4)):
        g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, MAX_DETS, k]))
    return model


def export_onnx(det: nn.Module, path: str) -> None:
    import io
    det = det.cpu().eval()
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter is the plain one
    buf = io.BytesIO()
    torch.onnx.export(Exported(det), (torch.zeros(1, SIZE, SIZE, 3),), buf, opset_version=17, dynamo=False,
                      input_names=["data"], output_names=["raw_boxes", "raw_scores"], do_constant_folding=True)
    model = _append_nms(onnx.load_from_string(buf.getvalue()))
    model.producer_name = "train_demo_detectors.py"
    onnx.checker.check_model(model, full_check=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save(model, path)


# --------------------------------------------------------------------------- evaluation

class OnnxDetector:
    """What the engine does: squash to 512x512 RGB float32 NHWC, run, map boxes back to the photo."""

    def __init__(self, path: str):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = min(4, os.cpu_count() or 1)
        self.sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        x = cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32)[None]
        ids, scores, boxes = self.sess.run(None, {"data": x})
        keep = ids[0, :, 0] >= 0
        b = np.clip(boxes[0, keep] / SIZE, 0.0, 1.0) * np.array([w, h, w, h], np.float32)
        return np.concatenate([ids[0, keep], scores[0, keep], b], 1)  # [cls, score, x0, y0, x1, y1]


def ap50(dets: List[np.ndarray], gts: List[np.ndarray]) -> Tuple[float, List[float]]:
    """COCO-style AP at IoU 0.5 (101-point interpolation, greedy matching by score)."""
    aps = []
    for c in range(NC):
        scored = []
        npos = 0
        for i, (d, g) in enumerate(zip(dets, gts)):
            npos += int((g[:, 0] == c).sum())
            for row in d[d[:, 0] == c]:
                scored.append((row[1], i, row[2:6]))
        scored.sort(key=lambda t: -t[0])
        used = [np.zeros(len(g), bool) for g in gts]
        tp = np.zeros(len(scored))
        for n, (_, i, box) in enumerate(scored):
            g = gts[i]
            m = (g[:, 0] == c) & ~used[i]
            if not m.any():
                continue
            iou = box_iou(torch.as_tensor(box[None], dtype=torch.float64),
                          torch.as_tensor(g[m, 1:5], dtype=torch.float64))[0].numpy()
            j = int(iou.argmax())
            if iou[j] >= 0.5:
                used[i][np.flatnonzero(m)[j]] = True
                tp[n] = 1
        if npos == 0:
            continue
        ctp = np.cumsum(tp)
        recall = ctp / npos
        precision = ctp / np.arange(1, len(tp) + 1)
        precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        pts = [precision[np.searchsorted(recall, r, side="left")] if np.searchsorted(recall, r, side="left") < len(recall) else 0.0
               for r in np.linspace(0, 1, 101)]
        aps.append(float(np.mean(pts)))
    return float(np.mean(aps)), aps


def evaluate(path: str, seed: int, n: int) -> None:
    detector = OnnxDetector(path)
    sizes = [(512, 512), (640, 480), (1280, 720)]
    per_size = {s: ([], []) for s in sizes}
    t = time.time()
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        w, h = sizes[i % len(sizes)]
        img, boxes = sd.make_sample(rng, w, h)
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        img = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
        per_size[(w, h)][0].append(detector(img))
        per_size[(w, h)][1].append(boxes)
    all_d = sum((v[0] for v in per_size.values()), [])
    all_g = sum((v[1] for v in per_size.values()), [])
    m, per_class = ap50(all_d, all_g)
    print("eval {} images ({:.2f} s/img): mAP@0.5 = {:.4f}  per class {}".format(
        n, (time.time() - t) / n, m, " ".join("{}={:.3f}".format(sd.CLASSES[k], a) for k, a in enumerate(per_class))))
    for s, (d, g) in per_size.items():
        print("  {}x{}: mAP@0.5 = {:.4f}".format(s[0], s[1], ap50(d, g)[0]))


# --------------------------------------------------------------------------- main

def train(det: nn.Module, images: np.ndarray, boxes: List[np.ndarray], args, dev: torch.device) -> None:
    opt = torch.optim.AdamW(det.parameters(), lr=args.lr, weight_decay=5e-4)
    steps_per_epoch = len(images) // args.batch
    total = steps_per_epoch * args.epochs
    warm = max(1, min(300, total // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.02 + 0.49 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    rng = np.random.default_rng(args.seed + 1000)
    step = 0
    t1 = time.time()
    for epoch in range(args.epochs):
        det.train()
        perm = rng.permutation(len(images))
        acc: dict = {}
        for k in range(steps_per_epoch):
            idx = np.sort(perm[k * args.batch:(k + 1) * args.batch])
            x, b = augment(images[idx], [boxes[i] for i in idx], rng, args.crop)
            loss, parts = det.loss(det(x.to(dev)), [torch.as_tensor(v, device=dev) for v in b], args.crop)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(det.parameters(), 10.0)
            opt.step()
            sched.step()
            step += 1
            for key, v in parts.items():
                acc[key] = acc.get(key, 0.0) + v
            if step % args.log_every == 0 or k == steps_per_epoch - 1:
                print("epoch {} step {}/{} loss {} lr {:.2e} {:.0f} s".format(
                    epoch + 1, step, total, " ".join("{}={:.3f}".format(kk, vv / (k + 1)) for kk, vv in acc.items()),
                    sched.get_last_lr()[0], time.time() - t1), flush=True)
    print("trained in {:.1f} min".format((time.time() - t1) / 60))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("ssd", "yolov3"), required=True)
    ap.add_argument("--out", required=True, help="model directory to write (model.onnx, labels.txt)")
    ap.add_argument("--epochs", type=int, default=18)
    ap.add_argument("--images", type=int, default=4000, help="training images (pre-rendered, kept in memory)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=384, help="training window (multiple of 128; 512: whole input)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval-images", type=int, default=150, help="fresh images to measure mAP@0.5 on, via ONNX")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="rendering processes")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--checkpoint", help="save the trained weights here (not shipped)")
    ap.add_argument("--from-checkpoint", help="skip training: export (and evaluate) these weights")
    args = ap.parse_args()
    if args.crop % 128 or not 128 <= args.crop <= SIZE:
        ap.error("--crop must be a multiple of 128 between 128 and 512")

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if args.from_checkpoint:
        ckpt = torch.load(args.from_checkpoint, map_location="cpu")
        det = SSD() if args.arch == "ssd" else YOLOv3(ckpt["anchors"])
        det.load_state_dict(ckpt["state_dict"])
    else:
        t0 = time.time()
        images, boxes = make_training_set(args.seed, args.images, args.workers)
        print("rendered {} training images in {:.0f} s".format(len(images), time.time() - t0), flush=True)
        if args.arch == "ssd":
            det = SSD()
        else:
            anchors = kmeans_anchors(boxes, seed=args.seed)
            print("anchors (w, h):", np.round(anchors, 1).tolist())
            det = YOLOv3(anchors)
        det.to(dev).to(memory_format=torch.channels_last)  # the input is NHWC: no layout conversions
        print("parameters: {}".format(sum(p.numel() for p in det.parameters())))
        train(det, images, boxes, args, dev)
        del images
        if args.checkpoint:
            anchors = det.anchor_wh.reshape(9, 2).cpu() if args.arch == "yolov3" else None
            torch.save({"state_dict": det.cpu().state_dict(), "anchors": anchors}, args.checkpoint)

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "model.onnx")
    export_onnx(det, path)
    with open(os.path.join(args.out, "labels.txt"), "w") as f:
        f.write("\n".join(sd.CLASSES) + "\n")
    print("wrote {} ({:.2f} MB)".format(path, os.path.getsize(path) / 1e6))
    if args.eval_images:
        evaluate(path, args.seed + 7777, args.eval_images)


if __name__ == "__main__":
    main()
