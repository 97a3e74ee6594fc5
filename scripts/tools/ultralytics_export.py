#!/usr/bin/env python3
"""Export Ultralytics YOLOv8 / YOLO11 / YOLOv5u detectors to ONNX the way users do, with random weights.

Runs in the Ultralytics tool venv (`scripts/tools/make-venv.sh ultralytics`), never in the runtime,
fully offline (YOLO_OFFLINE=1; nothing is downloaded):

    .tools/ultralytics/bin/python scripts/tools/ultralytics_export.py --model yolov8n --imgsz 256 --out DIR

writes DIR/raw/model.onnx (`model.export(format="onnx")`: one output (1, 4+classes, anchors), boxes
as centre x, y, width, height in input pixels, sigmoid class scores, no NMS) and DIR/nms/model.onnx
(`export(..., nms=True)`: one output (1, 300, 6) = x0, y0, x1, y1, score, class, zero-padded).

The architectures are Ultralytics' own yaml files (yolov8.yaml, yolo11.yaml, yolov5.yaml: the "u"
anchor-free head) at scale n with the width multiplier divided by 4 and 3 classes, so each file
stays near 1.5 MB; the head, its decoding and the exported graph are those of the full models.
Random weights would score every anchor near 0 (Ultralytics initialises the class bias for a
prior of 0.01), so the class-score bias is re-drawn (seeded) to give a few confident boxes.

Torchvision from PyPI is a CUDA build whose C++ ops cannot load next to the local CPU-only torch
wheel, and `export(nms=True)` calls torchvision.ops.nms in its dry run. Its op schema is therefore
registered here with a plain-torch kernel before torchvision is imported: the exported graph is
unchanged (torchvision's own ONNX symbolic still emits NonMaxSuppression); only the dry run uses it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("YOLO_OFFLINE", "1")
import torch  # noqa: E402
import yaml  # noqa: E402

ARCHS = {"yolov8n": ("v8", "yolov8.yaml"), "yolo11n": ("11", "yolo11.yaml"), "yolov5nu": ("v5", "yolov5.yaml")}
CLASSES = ["circle", "square", "triangle"]
CONF, IOU = 0.25, 0.45
FIXED_DATE = "2000-01-01T00:00:00+00:00"
WEIGHT_GAIN = 1.2
LOGIT_STD, TOP_SHARE = 1.0, 0.02
CALIBRATION_SIZE = 256  # class logits: spread, and the share of them above CONF  # the connector's defaults for Ultralytics formats: both exports agree


def _cpu_nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = scores.argsort(descending=True)
    x0, y0, x1, y1 = dets.unbind(1)
    area = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    alive = torch.ones(len(order), dtype=torch.bool)
    keep = []
    for k in range(len(order)):
        if not alive[k]:
            continue
        i, rest = order[k], order[k + 1:]
        keep.append(int(i))
        iw = (torch.minimum(x1[i], x1[rest]) - torch.maximum(x0[i], x0[rest])).clamp(min=0)
        ih = (torch.minimum(y1[i], y1[rest]) - torch.maximum(y0[i], y0[rest])).clamp(min=0)
        inter = iw * ih
        # as torchvision's kernel: only IoU > threshold suppresses (0/0 of empty boxes is NaN: kept)
        alive[k + 1:] &= ~(inter / (area[i] + area[rest] - inter) > iou_threshold)
    return torch.tensor(keep, dtype=torch.long)


def _torchvision_without_its_cuda_ops() -> None:
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _cpu_nms, "CPU")
    _torchvision_without_its_cuda_ops.lib = lib  # keep the registration alive
    import torchvision.extension
    torchvision.extension._has_ops = _has_ops


def _has_ops() -> bool:  # a plain function: TorchScript compiles callers of torchvision's check
    return True


def small_yaml(arch: str, work: str) -> str:
    import ultralytics
    sub, name = ARCHS[arch]
    with open(os.path.join(os.path.dirname(ultralytics.__file__), "cfg", "models", sub, name)) as f:
        cfg = yaml.safe_load(f)
    depth, width, max_ch = cfg["scales"]["n"]
    cfg["scales"] = {"n": [depth, width / 4, max_ch]}
    cfg["nc"] = len(CLASSES)
    path = os.path.join(work, arch + "-tiny.yaml")  # "yolov8n..." in the name selects scale n
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def build(arch: str, seed: int, work: str):
    from ultralytics import YOLO
    torch.manual_seed(seed)
    model = YOLO(small_yaml(arch, work))
    model.model.names = dict(enumerate(CLASSES))
    head = model.model.model[-1]
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        # PyTorch's default conv init shrinks the signal ~10x per layer: by the head every anchor
        # sees zeros. A slightly boosted He-normal keeps it alive through SiLU, as trained weights
        # do. The DFL convolution is a fixed decoder (not trainable): left as it is.
        for m in model.model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad:
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * WEIGHT_GAIN * (2.0 / fan_in) ** 0.5)
    _calibrate_class_scores(model.model, head)
    return model


def calibration_pictures(size: int, count: int = 8) -> torch.Tensor:
    """Synthetic-shapes pictures (scripts/shapes_dataset.py, seeds the tests never use),
    stretched to (count, 3, size, size) in 0..1."""
    import cv2
    import numpy as np
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import shapes_dataset as sd
    pics = [cv2.resize(sd.make_sample(np.random.default_rng([31337, i]), 640, 480)[0], (size, size))
            for i in range(count)]
    return torch.from_numpy(np.stack(pics).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


def _calibrate_class_scores(net, head) -> None:
    """Scale and shift the class-score convolutions so that, on the calibration picture, the
    logits spread by LOGIT_STD and TOP_SHARE of them clear CONF: some confident boxes, no
    saturated scores of exactly 1.0 (whose ties would make the order of detections arbitrary)."""
    lasts = [branch[-1] for branch in head.cv3]  # one per stride
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.flatten())) for m in lasts]
    net.eval()
    with torch.no_grad():
        for m in lasts:
            m.bias.zero_()
        net(calibration_pictures(CALIBRATION_SIZE))
        logits = torch.cat(seen)
        scale = LOGIT_STD / float(logits.std())
        top = float(torch.quantile(logits * scale, 1.0 - TOP_SHARE))
        conf_logit = float(torch.logit(torch.tensor(CONF)))
        for m in lasts:
            m.weight.mul_(scale)
            m.bias.fill_(conf_logit - top)
    for h in hooks:
        h.remove()


def _fix_export_date(src: str, dst: str) -> None:
    """Move the export, with its metadata 'date' (the only thing a rerun changes) set to a fixed
    value, so that regenerated files are byte-identical to the committed ones."""
    import onnx
    model = onnx.load(src)
    for prop in model.metadata_props:
        if prop.key == "date":
            prop.value = FIXED_DATE
    onnx.save(model, dst)
    os.unlink(src)


def export(arch: str, imgsz: int, seed: int, out: str) -> dict:
    _torchvision_without_its_cuda_ops()
    work = tempfile.mkdtemp(prefix="ultralytics-export-")
    cwd = os.getcwd()
    os.chdir(work)  # Ultralytics writes next to the yaml / into the working directory
    try:
        info = {"arch": arch, "imgsz": imgsz, "seed": seed, "classes": CLASSES, "conf": CONF, "iou": IOU}
        for kind, nms in (("raw", False), ("nms", True)):
            model = build(arch, seed, work)
            kwargs = dict(format="onnx", imgsz=imgsz, nms=nms, verbose=False)
            if nms:
                kwargs.update(conf=CONF, iou=IOU)
            path = model.export(**kwargs)
            target = os.path.join(cwd, out, kind)
            os.makedirs(target, exist_ok=True)
            _fix_export_date(path, os.path.join(target, "model.onnx"))
            with open(os.path.join(target, "labels.txt"), "w") as f:
                f.write("\n".join(CLASSES) + "\n")
            info[kind] = os.path.join(out, kind, "model.onnx")
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(ARCHS), required=True)
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="writes OUT/raw/ and OUT/nms/")
    args = ap.parse_args()
    print(json.dumps(export(args.model, args.imgsz, args.seed, args.out)))


if __name__ == "__main__":
    main()
