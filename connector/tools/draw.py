"""Annotated copies of images: boxes, labels and scores drawn on the original pixels."""
from __future__ import annotations

from typing import List, Optional, Sequence

import cv2
import numpy as np

# Boxes scoring below this are not drawn. The service's answer carries every detection above the
# model's own floor (often 0.01-0.05: dozens of rows), so whatever draws says how many it kept.
DEFAULT_MIN_SCORE = 0.3

# Distinct, colour-blind-friendly BGR colours (Okabe-Ito), cycled by class id.
_PALETTE = [(0, 159, 230), (233, 180, 86), (115, 158, 0), (66, 228, 240), (178, 114, 0),
            (0, 94, 213), (167, 121, 204), (0, 0, 0)]


def annotate(bgr: np.ndarray, predictions: List[list], labels: Optional[Sequence[str]] = None,
             min_score: float = DEFAULT_MIN_SCORE) -> np.ndarray:
    """A copy of `bgr` with every prediction scoring at least `min_score` drawn on it."""
    out = bgr.copy()
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 300))
    for cls, score, x0, y0, x1, y1 in predictions:
        if score < min_score:
            continue
        colour = _PALETTE[cls % len(_PALETTE)]
        p0, p1 = (int(x0 * w), int(y0 * h)), (int(x1 * w), int(y1 * h))
        cv2.rectangle(out, p0, p1, colour, thick)
        name = labels[cls] if labels and 0 <= cls < len(labels) else str(cls)
        text = "{} {:.2f}".format(name, score)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, thick)
        ty = p0[1] - 2 if p0[1] - th - base - 2 >= 0 else p0[1] + th + 2
        cv2.rectangle(out, (p0[0], ty - th - 2), (p0[0] + tw + 2, ty + base), colour, -1)
        cv2.putText(out, text, (p0[0] + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick,
                    (255, 255, 255), thick, cv2.LINE_AA)
    return out


def drawn_summary(predictions: List[list], min_score: float = DEFAULT_MIN_SCORE) -> str:
    """How the answer and the drawing relate, e.g. "53 rows in the answer, 2 at or above the drawing
    threshold 0.3 (drawn)": the rows below it are in the answer, only not drawn."""
    drawn = sum(1 for p in predictions if p[1] >= min_score)
    return "{} row{} in the answer, {} at or above the drawing threshold {:g} (drawn)".format(
        len(predictions), "" if len(predictions) == 1 else "s", drawn, min_score)
