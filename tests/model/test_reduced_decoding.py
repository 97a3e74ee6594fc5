"""Scaled JPEG decoding: a JPEG at least twice the model input in both directions is decoded
reduced by libjpeg (1/2, 1/4, 1/8), never below what the resize to the model input uses.

The tensor the model gets is compared with an anti-aliased reference (the full image resized with
INTER_AREA): the reduced path must be closer to it than the old full decode + INTER_LINEAR. The
demo models' mAP on large pictures is in tests/model/test_demo_models.py.
"""
from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from connector.model import imaging, preprocess
from connector.errors import InvalidImageError
from connector.model.directory import ModelMetadata
from tests.service_process import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import shapes_dataset as sd  # noqa: E402

SQUARE = ModelMetadata(width=512, height=512, resize="stretch")
LETTERBOX = ModelMetadata(width=640, height=640, resize="letterbox")
WIDE = ModelMetadata(width=640, height=384, resize="stretch")


@pytest.mark.parametrize("meta, size, factor", [
    (SQUARE, (640, 480), 1),        # smaller than twice the input
    (SQUARE, (1280, 720), 1),       # 720 / 2 = 360 < 512
    (SQUARE, (1920, 1080), 2),
    (SQUARE, (1023, 1023), 2),      # ceil(1023 / 2) = 512: libjpeg rounds up
    (SQUARE, (1022, 1022), 1),
    (SQUARE, (1024, 1024), 2),
    (SQUARE, (1022, 4000), 1),      # one short side is enough to forbid it
    (SQUARE, (3840, 2160), 4),
    (SQUARE, (8192, 4096), 8),      # 8 is libjpeg's largest
    (SQUARE, (20000, 20000), 8),
    (LETTERBOX, (1920, 1080), 2),   # fitted to 640x360: 960x540 keeps it, 480x270 does not
    (LETTERBOX, (3840, 2160), 4),
    (LETTERBOX, (1280, 720), 2),    # 640x360 is exactly the fitted size
    (WIDE, (1920, 1080), 1),        # 960x540 >= 640x384, but turned by EXIF 540 < 640
    (WIDE, (3840, 2160), 2),
])
def test_reduction_is_the_largest_power_of_two_that_keeps_the_input(meta, size, factor):
    w, h = size
    got = preprocess.reduction(w, h, meta)
    # Independent check of the rule for both orientations: each reduced side (rounded up) stays
    # at least as long as what the resize maps it to.
    def needed(w: int, h: int) -> tuple:
        if meta.resize == "letterbox":
            r = min(meta.width / w, meta.height / h)
            return w * r, h * r
        return meta.width, meta.height

    best = 1
    for f in (2, 4, 8):
        ok = all(-(-a // f) >= na and -(-b // f) >= nb
                 for (a, b) in ((w, h), (h, w)) for (na, nb) in [needed(a, b)])
        if ok:
            best = f
    assert got == best == factor


def _jpeg(w: int, h: int, seed: int = 1) -> bytes:
    rgb, _ = sd.make_sample(np.random.default_rng([31, seed]), w, h)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def _by(factor: int):
    return lambda w, h: factor


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_a_reduced_jpeg_has_each_side_divided_and_rounded_up(factor):
    data = _jpeg(1921, 1081)
    pixels = imaging.decode_bgr(data, reduction=_by(factor))
    assert pixels.shape == (-(-1081 // factor), -(-1921 // factor), 3)
    assert pixels.dtype == np.uint8


def test_png_is_never_reduced():
    ok, png = cv2.imencode(".png", np.full((1080, 1920, 3), 90, np.uint8))
    assert imaging.decode_bgr(png.tobytes(), reduction=_by(4)).shape == (1080, 1920, 3)


def test_limits_still_apply_to_the_full_size():
    data = _jpeg(1920, 1080)
    with pytest.raises(InvalidImageError, match="1920x1080 = 2073600 pixels, over the limit"):
        imaging.decode_bgr(data, max_pixels=1920 * 1080 - 1, reduction=_by(8))


def test_a_truncated_jpeg_is_refused_reduced_too():
    data = _jpeg(1920, 1080)
    with pytest.raises(InvalidImageError, match="truncated"):
        imaging.decode_bgr(data[: len(data) // 2], reduction=_by(2))


@pytest.mark.parametrize("size", [(1920, 1080), (3840, 2160)])
def test_the_reduced_tensor_is_closer_to_an_area_resize_than_full_decode_plus_linear(size):
    """Mean absolute difference (0-255 scale) from INTER_AREA on the full image, measured here on
    shape photos: 1920x1080 about 0.7 reduced vs 1.5 full+linear; 3840x2160 about 0.5 vs 1.8."""
    w, h = size
    meta = SQUARE
    reduced_diff, linear_diff = [], []
    for seed in range(3):
        data = _jpeg(w, h, seed)
        full = imaging.decode_bgr(data)
        reference = preprocess.to_tensor(cv2.resize(full, (512, 512), interpolation=cv2.INTER_AREA), meta)[0]
        old = preprocess.to_tensor(full, meta)[0]
        new = preprocess.to_tensor(
            imaging.decode_bgr(data, reduction=lambda a, b: preprocess.reduction(a, b, meta)), meta)[0]
        assert new.shape == reference.shape
        reduced_diff.append(float(np.abs(new - reference).mean()))
        linear_diff.append(float(np.abs(old - reference).mean()))
    assert np.mean(reduced_diff) < np.mean(linear_diff), (reduced_diff, linear_diff)
    assert np.mean(reduced_diff) < 1.5, reduced_diff  # a few grey levels at most, on average
