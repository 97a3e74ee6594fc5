"""Decoded pixels to the model's input tensor, as the model directory's metadata describes it."""
from __future__ import annotations

import cv2
import numpy as np

from .model_dir import ModelMetadata


def to_tensor(bgr: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """Resize (no letterbox: boxes map back by plain fractions) and lay out one image as a batch of 1."""
    # Resize before the colour swap and the float cast: both then touch only model-size pixels.
    pixels = cv2.resize(bgr, (meta.width, meta.height), interpolation=cv2.INTER_LINEAR)
    if meta.color == "RGB":
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    tensor = pixels.astype(np.float32 if meta.dtype == "float32" else np.uint8)
    if meta.normalises:
        tensor = (tensor - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    if meta.layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor[np.newaxis])
