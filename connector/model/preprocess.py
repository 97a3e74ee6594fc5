"""Decoded pixels to the model's input tensor, as the model's input contract describes it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np

from .directory import ModelMetadata

LETTERBOX_PAD = 114  # Ultralytics' grey


@dataclass(frozen=True)
class Frame:
    """How model-input pixels map back to the image: image_x = (model_x - pad_x) / scale_x."""
    image_width: int
    image_height: int
    scale_x: float
    scale_y: float
    pad_x: float = 0.0
    pad_y: float = 0.0

    def to_fractions(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes in model-input pixels to fractions of the image width/height (unclipped)."""
        pad = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        scale = np.array([self.scale_x * self.image_width, self.scale_y * self.image_height] * 2)
        return (boxes - pad) / scale


def _stretch(bgr: np.ndarray, meta: ModelMetadata) -> Tuple[np.ndarray, Frame]:
    h, w = bgr.shape[:2]
    pixels = cv2.resize(bgr, (meta.width, meta.height), interpolation=cv2.INTER_LINEAR)
    return pixels, Frame(w, h, meta.width / w, meta.height / h)


def _letterbox(bgr: np.ndarray, meta: ModelMetadata) -> Tuple[np.ndarray, Frame]:
    """Scale to fit keeping the aspect ratio, pad the rest evenly (as Ultralytics' LetterBox with
    auto=False, center=True, which its exports were trained and validated with)."""
    h, w = bgr.shape[:2]
    r = min(meta.height / h, meta.width / w)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    if (new_w, new_h) != (w, h):
        bgr = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (meta.width - new_w) / 2, (meta.height - new_h) / 2
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    pixels = cv2.copyMakeBorder(bgr, top, meta.height - new_h - top, left, meta.width - new_w - left,
                                cv2.BORDER_CONSTANT, value=(LETTERBOX_PAD,) * 3)
    return pixels, Frame(w, h, new_w / w, new_h / h, float(left), float(top))


REDUCTIONS = (8, 4, 2)  # what libjpeg's DCT scaling offers (OpenCV's IMREAD_REDUCED_COLOR_*)


def reduction(width: int, height: int, meta: ModelMetadata) -> int:
    """The largest power of two (up to 8) an image of `width` x `height` can be shrunk by before
    the resize without losing pixels the model input would use: every side the resize maps onto
    the model input stays at least as long as its image there. Computed for the image turned by a
    quarter too (EXIF orientation is applied after the header is read), so it holds either way."""
    def fits(w: int, h: int, factor: int) -> bool:
        # A reduced side is the full one divided and rounded up.
        rw, rh = -(-w // factor), -(-h // factor)
        if meta.resize == "letterbox":
            # Scaled by min(model/image) on both axes: the binding axis must still reach the model's side.
            r = min(meta.height / h, meta.width / w)
            return rw >= w * r and rh >= h * r
        return rw >= meta.width and rh >= meta.height

    for factor in REDUCTIONS:
        if fits(width, height, factor) and fits(height, width, factor):
            return factor
    return 1


def to_tensor(bgr: np.ndarray, meta: ModelMetadata) -> Tuple[np.ndarray, Frame]:
    """One image laid out as the model takes it, and the frame that maps its boxes back."""
    # Resize before the colour swap and the float cast: both then touch only model-size pixels.
    pixels, frame = (_letterbox if meta.resize == "letterbox" else _stretch)(bgr, meta)
    if meta.dtype == "float32" and meta.layout == "NCHW":
        # One OpenCV pass does the swap, the mean, the scale and the transpose (~3x faster than
        # the numpy steps below on a 640x640 input). Its mean is in the swapped (model) order;
        # its scale is one number, so per-channel stds are applied afterwards, in place.
        uniform = len(set(meta.std)) == 1
        tensor = cv2.dnn.blobFromImage(pixels, 1.0 / meta.std[0] if uniform else 1.0,
                                       mean=meta.mean, swapRB=meta.color == "RGB")
        if not uniform:
            tensor *= (1.0 / np.asarray(meta.std, np.float32))[None, :, None, None]
        return (tensor if meta.batch_axis else tensor[0]), frame
    if meta.color == "RGB":
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if meta.dtype == "uint8":
        tensor = pixels  # the contract allows no mean/std with uint8 (contract.resolve)
    else:
        tensor = pixels.astype(np.float32)
        if meta.normalises:
            tensor = (tensor - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    if meta.layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor[np.newaxis] if meta.batch_axis else tensor), frame
