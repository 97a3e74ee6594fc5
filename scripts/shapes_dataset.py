"""Synthetic "shapes" detection data: filled circles, squares and triangles on cluttered backgrounds.

Used to train the two bundled demo detectors and to test them on fresh images. Only numpy and cv2.

Objects (class id: 0 circle, 1 square, 2 triangle) are FILLED shapes whose bounding box spans about
20 to 200 px when the shorter image side is 512 px (scaled with the image). Everything else in the
picture is background on purpose: textures, gradients, blotches, noise, and clutter that looks a
bit like an object without being one (outlines and rings, lines, crosses, stars, strongly elongated
ellipses, small blobs), so a detector has to learn "filled circle/square/triangle" and not "thing".
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle")
MIN_SIZE, MAX_SIZE = 20.0, 200.0  # object bounding-box extent at a 512 px shorter side
# Sizes the engine sees in practice; the detector input is always a plain resize to 512x512.
COMMON_SIZES = ((512, 512), (640, 480), (1280, 720), (480, 640), (800, 600), (720, 1280),
                (1024, 768), (600, 600), (960, 540), (416, 416))

SeedLike = Union[None, int, np.random.Generator]
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel vertex positions, so boxes are exact
_ONE = 1 << _SHIFT


def _rng(seed: SeedLike) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def random_size(rng: np.random.Generator) -> Tuple[int, int]:
    """(width, height): mostly the common camera sizes, sometimes an arbitrary aspect ratio."""
    if rng.random() < 0.7:
        return COMMON_SIZES[int(rng.integers(len(COMMON_SIZES)))]
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    area = rng.uniform(300.0, 900.0) ** 2
    return int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))


# --------------------------------------------------------------------------- background

def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in 0..1 with features about `cell` px large."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    return cv2.resize(rng.random((gh, gw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)


def _two_colour(a: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    a = np.clip(a, 0.0, 1.0)[..., None]
    return c1 * (1.0 - a) + c2 * a


def _background(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    def colour() -> np.ndarray:
        return rng.uniform(0, 255, 3).astype(np.float32)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    layers = []
    for _ in range(int(rng.integers(1, 3))):
        kind = int(rng.integers(5))
        if kind == 0:  # linear gradient
            t = rng.uniform(0, 2 * math.pi)
            a = (xx * math.cos(t) + yy * math.sin(t))
            a = (a - a.min()) / max(1e-6, float(a.max() - a.min()))
        elif kind == 1:  # multi-octave noise, like foliage, walls, gravel
            a = sum(_value_noise(rng, h, w, s * c) * wt for c, wt in ((160, 0.5), (40, 0.3), (8, 0.2)))
            a = (a - a.min()) / max(1e-6, float(a.max() - a.min()))
        elif kind == 2:  # stripes or woven texture
            t = rng.uniform(0, math.pi)
            period = s * rng.uniform(6, 60)
            a = 0.5 + 0.5 * np.sin((xx * math.cos(t) + yy * math.sin(t)) * (2 * math.pi / period))
            if rng.random() < 0.5:
                a = a * (0.5 + 0.5 * np.sin((-xx * math.sin(t) + yy * math.cos(t)) * (2 * math.pi / period)))
        elif kind == 3:  # soft blotches: large out-of-focus regions
            small = np.zeros((max(4, h // 16), max(4, w // 16)), np.float32)
            for _ in range(int(rng.integers(3, 10))):
                c = (int(rng.integers(small.shape[1])), int(rng.integers(small.shape[0])))
                ax = (int(rng.integers(2, max(3, small.shape[1] // 2))), int(rng.integers(2, max(3, small.shape[0] // 2))))
                cv2.ellipse(small, c, ax, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(0.3, 1.0)), -1)
            small = cv2.GaussianBlur(small, (0, 0), max(small.shape) / 12.0)
            a = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        else:  # flat
            a = np.zeros((h, w), np.float32)
        layers.append(_two_colour(a, colour(), colour()))
    img = layers[0]
    if len(layers) > 1:
        mix = _value_noise(rng, h, w, s * rng.uniform(60, 250))[..., None]
        img = img * mix + layers[1] * (1.0 - mix)
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- geometry

def _circle_pts(cx: float, cy: float, rx: float, ry: float, rot: float = 0.0, n: int = 72) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, si = math.cos(rot), math.sin(rot)
    return np.stack([cx + x * c - y * si, cy + x * si + y * c], 1)


def _regular_pts(cx: float, cy: float, r: float, k: int, rot: float) -> np.ndarray:
    t = rot + np.arange(k) * (2 * math.pi / k)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _star_pts(cx: float, cy: float, r: float, k: int, inner: float, rot: float) -> np.ndarray:
    t = rot + np.arange(2 * k) * (math.pi / k)
    rr = np.where(np.arange(2 * k) % 2 == 0, r, r * inner)
    return np.stack([cx + rr * np.cos(t), cy + rr * np.sin(t)], 1)


def _cross_pts(cx: float, cy: float, r: float, arm: float, rot: float) -> np.ndarray:
    a = r * arm
    p = np.array([(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a),
                  (-r, a), (-r, -a), (-a, -a)], np.float64)
    c, si = math.cos(rot), math.sin(rot)
    return np.stack([cx + p[:, 0] * c - p[:, 1] * si, cy + p[:, 0] * si + p[:, 1] * c], 1)


def _fixed(pts: np.ndarray) -> np.ndarray:
    # cv2 pixel centres are at integer coordinates; our boxes use pixel edges (0..W), hence -0.5
    return np.round((pts - 0.5) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _paint(img: np.ndarray, pts: np.ndarray, colour: np.ndarray, rng: np.random.Generator,
           thickness: int = -1, shade: bool = False) -> None:
    """Alpha-composite a filled (or outlined) anti-aliased polygon, touching only its box."""
    h, w = img.shape[:2]
    pad = thickness + 2 if thickness > 0 else 2
    x0, y0 = max(0, int(pts[:, 0].min()) - pad), max(0, int(pts[:, 1].min()) - pad)
    x1, y1 = min(w, int(math.ceil(pts[:, 0].max())) + pad), min(h, int(math.ceil(pts[:, 1].max())) + pad)
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    local = _fixed(pts - np.array([x0, y0]))
    if thickness < 0:
        cv2.fillPoly(mask, [local], 255, cv2.LINE_AA, _SHIFT)
    else:
        cv2.polylines(mask, [local], True, 255, thickness, cv2.LINE_AA, _SHIFT)
    a = mask.astype(np.float32)[..., None] / 255.0
    fill = np.broadcast_to(colour.astype(np.float32), a.shape[:2] + (3,))
    if shade:  # lit from one side, like a real object
        yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]].astype(np.float32)
        t = rng.uniform(0, 2 * math.pi)
        g = xx * math.cos(t) + yy * math.sin(t)
        g = (g - g.min()) / max(1e-6, float(g.max() - g.min())) - 0.5
        fill = np.clip(fill + g[..., None] * rng.uniform(20, 70), 0, 255)
    roi = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = np.clip(roi * (1.0 - a) + fill * a + 0.5, 0, 255).astype(np.uint8)


def _contrasting_colour(rng: np.random.Generator, img: np.ndarray, pts: np.ndarray,
                        min_dist: float = 90.0) -> np.ndarray:
    """A random colour that stands out from what lies under the shape (or the best of a few tries)."""
    h, w = img.shape[:2]
    x0, y0 = max(0, int(pts[:, 0].min())), max(0, int(pts[:, 1].min()))
    x1, y1 = min(w, int(pts[:, 0].max()) + 1), min(h, int(pts[:, 1].max()) + 1)
    under = img[y0:y1, x0:x1].reshape(-1, 3).astype(np.float32).mean(0)
    best, best_d = None, -1.0
    for _ in range(12):
        c = rng.uniform(0, 255, 3)
        d = float(np.linalg.norm(c - under))
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


# --------------------------------------------------------------------------- objects and clutter

def _object_pts(rng: np.random.Generator, cls: int, cx: float, cy: float, extent: float) -> np.ndarray:
    """Polygon of a filled object whose larger box side is `extent`."""
    rot = rng.uniform(0, 2 * math.pi)
    if cls == 0:
        pts = _circle_pts(cx, cy, 0.5, 0.5)
    elif cls == 1:
        pts = _regular_pts(cx, cy, 1.0, 4, rot if rng.random() < 0.6 else math.pi / 4)
    else:
        pts = _regular_pts(cx, cy, 1.0, 3, rot if rng.random() < 0.7 else -math.pi / 2)
    rel = pts - np.array([cx, cy])
    span = float(max(np.ptp(rel[:, 0]), np.ptp(rel[:, 1])))
    return np.array([cx, cy]) + rel * (extent / span)


def _clutter(rng: np.random.Generator, img: np.ndarray, s: float, count: int) -> None:
    h, w = img.shape[:2]
    for _ in range(count):
        kind = int(rng.integers(8))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = s * math.exp(rng.uniform(math.log(MIN_SIZE / 2), math.log(MAX_SIZE / 2)))
        rot = rng.uniform(0, 2 * math.pi)
        colour = rng.uniform(0, 255, 3)
        thin = max(1, int(round(min(r * rng.uniform(0.03, 0.12), 12 * s))))
        if kind == 0:  # straight line
            t = rng.uniform(0, math.pi)
            ln = s * rng.uniform(40, 500)
            p = np.array([[cx - ln * math.cos(t), cy - ln * math.sin(t)], [cx + ln * math.cos(t), cy + ln * math.sin(t)]])
            _paint(img, p, colour, rng, thickness=max(1, int(s * rng.uniform(1, 6))))
        elif kind == 1:  # ring / outlined circle
            _paint(img, _circle_pts(cx, cy, r, r), colour, rng, thickness=thin)
        elif kind == 2:  # outlined square or triangle
            _paint(img, _regular_pts(cx, cy, r, int(rng.choice([3, 4])), rot), colour, rng, thickness=thin)
        elif kind == 3:  # cross
            _paint(img, _cross_pts(cx, cy, r, rng.uniform(0.15, 0.35), rot), colour, rng)
        elif kind == 4:  # star
            _paint(img, _star_pts(cx, cy, r, int(rng.integers(5, 9)), rng.uniform(0.35, 0.55), rot), colour, rng)
        elif kind == 5:  # strongly elongated ellipse (a squashed circle never gets that thin)
            _paint(img, _circle_pts(cx, cy, r, r / rng.uniform(4.0, 9.0), rot), colour, rng)
        elif kind == 6:  # small blobs, well below the smallest object
            for _ in range(int(rng.integers(1, 6))):
                rb = s * rng.uniform(1.0, 3.5)
                _paint(img, _circle_pts(cx + rng.normal(0, 20 * s), cy + rng.normal(0, 20 * s), rb,
                                        rb * rng.uniform(0.6, 1.0), rot, n=16), colour, rng)
        else:  # wiggly curve
            n = int(rng.integers(4, 12))
            steps = rng.normal(0, r * 0.5, (n, 2))
            p = np.array([cx, cy]) + np.cumsum(steps, 0)
            cv2.polylines(img, [_fixed(p)], False, colour.tolist(), max(1, int(s * rng.uniform(1, 4))),
                          cv2.LINE_AA, _SHIFT)


def _place(rng: np.random.Generator, boxes: List[Tuple[float, float, float, float]], w: int, h: int,
           extent: float) -> Optional[Tuple[float, float]]:
    """Centre for a new object fully inside the image that barely overlaps the others."""
    half = extent / 2 + 1
    if w < 2 * half or h < 2 * half:
        return None
    for _ in range(30):
        cx, cy = rng.uniform(half, w - half), rng.uniform(half, h - half)
        b = (cx - half, cy - half, cx + half, cy + half)
        ok = True
        for o in boxes:
            iw = min(b[2], o[2]) - max(b[0], o[0])
            ih = min(b[3], o[3]) - max(b[1], o[1])
            if iw > 0 and ih > 0 and iw * ih > 0.08 * min((b[2] - b[0]) * (b[3] - b[1]), (o[2] - o[0]) * (o[3] - o[1])):
                ok = False
                break
        if ok:
            return cx, cy
    return None


def make_sample(seed: SeedLike, width: int = 512, height: int = 512,
                max_objects: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic photo.

    Returns (image, boxes): image uint8 RGB (height, width, 3); boxes float32 (n, 5) rows
    [class, x0, y0, x1, y1] in pixel-edge coordinates of this image (0..width, 0..height).
    """
    rng = _rng(seed)
    s = min(width, height) / 512.0  # object sizes follow the image, not the pixel count
    area = width * height / (512.0 * 512.0) / (s * s)
    img = _background(rng, height, width, s)
    _clutter(rng, img, s, int(rng.integers(3, 14) * area))

    if max_objects is None:
        max_objects = int(round(8 * area))
    n = 0 if rng.random() < 0.04 else int(rng.integers(1, max_objects + 1))
    placed: List[Tuple[float, float, float, float]] = []
    boxes = []
    for _ in range(n):
        cls = int(rng.integers(3))
        extent = s * math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE)))
        c = _place(rng, placed, width, height, extent)
        if c is None:
            continue
        pts = _object_pts(rng, cls, c[0], c[1], extent)
        _paint(img, pts, _contrasting_colour(rng, img, pts), rng, shade=rng.random() < 0.35)
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        placed.append((c[0] - extent / 2, c[1] - extent / 2, c[0] + extent / 2, c[1] + extent / 2))
        boxes.append((cls, x0, y0, x1, y1))

    if rng.random() < 0.3:  # a thin line across everything: small, realistic occlusion
        line = np.array([[rng.uniform(0, width), rng.uniform(0, height)],
                                  [rng.uniform(0, width), rng.uniform(0, height)]])
        _paint(img, line, rng.uniform(0, 255, 3), rng, thickness=max(1, int(s * rng.uniform(1, 3))))
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.3) * s)
    sigma = rng.uniform(0, 10)
    if sigma > 1:
        img = np.clip(img + rng.normal(0, sigma, img.shape).astype(np.float32), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img), np.array(boxes, np.float32).reshape(-1, 5)


def resize_sample(image: np.ndarray, boxes: np.ndarray, size: int = 512) -> Tuple[np.ndarray, np.ndarray]:
    """Squash to size x size exactly as the engine does (no letterbox), boxes scaled with it."""
    h, w = image.shape[:2]
    out = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    b = boxes.copy()
    b[:, [1, 3]] *= size / w
    b[:, [2, 4]] *= size / h
    return out, b


def coco_ground_truth(samples: Iterable[Tuple[int, int, np.ndarray]]) -> Dict:
    """COCO ground-truth dict for pycocotools from (width, height, boxes) per image.

    Image ids are 1-based positions; category id = class id + 1 (COCO reserves 0).
    """
    images, annotations = [], []
    for i, (w, h, boxes) in enumerate(samples, 1):
        images.append({"id": i, "width": int(w), "height": int(h), "file_name": "{}.png".format(i)})
        for cls, x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 5):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(cls) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_results(image_id: int, detections: Sequence[Sequence[float]]) -> List[Dict]:
    """COCO result entries from [class, score, x0, y0, x1, y1] rows in pixels of the image."""
    return [{"image_id": image_id, "category_id": int(d[0]) + 1, "score": float(d[1]),
             "bbox": [float(d[2]), float(d[3]), float(d[4] - d[2]), float(d[5] - d[3])]}
            for d in detections]


if __name__ == "__main__":  # write a few examples with their boxes drawn, for eyeballing
    import os
    import sys
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/shapes_preview"
    os.makedirs(out, exist_ok=True)
    g = np.random.default_rng(0)
    for k in range(12):
        w, h = random_size(g)
        im, bx = make_sample(g, w, h)
        im = cv2.cvtColor(im, cv2.COLOR_RGB2BGR)
        for cls, x0, y0, x1, y1 in bx:
            cv2.rectangle(im, (int(x0), int(y0)), (int(x1), int(y1)), (0, 255, 0), 1)
            cv2.putText(im, CLASSES[int(cls)][0], (int(x0), int(y0) - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
        cv2.imwrite(os.path.join(out, "{:02d}_{}x{}.jpg".format(k, w, h)), im)
    print(out)


def encode_mixed(rgb: np.ndarray, index: int) -> Tuple[bytes, str]:
    """(bytes, content type) as a camera feed would send them: JPEG quality 90, and every fourth
    image (index % 4 == 3) PNG, so that evaluation and benchmarks see both formats."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if index % 4 == 3:
        ok, data = cv2.imencode(".png", bgr)
        kind = "image/png"
    else:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        kind = "image/jpeg"
    if not ok:
        raise RuntimeError("OpenCV could not encode a sample image")
    return data.tobytes(), kind
