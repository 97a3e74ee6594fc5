"""The deterministic test picture the Neo reference outputs are computed on (numpy only).

tvm_compile.py records TVM's outputs on it at compile time; the tests rebuild it and feed it to DLR.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def pattern_image(shape: Sequence[int]) -> np.ndarray:
    """A busy float32 picture, values 0..255, in the layout of `shape` ((1,H,W,3) or (1,3,H,W)).

    Integer arithmetic only, so every numpy version on every machine produces the same bytes:
    nothing large has to be shipped.
    """
    nchw = shape[1] == 3 and shape[3] != 3
    h, w = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
    y, x, c = np.meshgrid(np.arange(h, dtype=np.int64), np.arange(w, dtype=np.int64),
                          np.arange(3, dtype=np.int64), indexing="ij")
    img = (x * x + 3 * y * y + 17 * c * x * y + 5 * (x // 37) * (y // 23)) // 7 % 256
    img = img.astype(np.float32)[None]
    return np.ascontiguousarray(img.transpose(0, 3, 1, 2)) if nchw else img
