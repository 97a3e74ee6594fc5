"""The sampling strategies of SPEC section 6, on both kinds of prediction.

* A list of class probabilities (image classification, kept for compatibility): normalised when
  its sum differs from 1 by more than 1e-8. RANDOM ``random() < rate``; LEAST_CONFIDENCE
  ``max(p) < t``; MARGIN ``top1 - top2 < t``; ENTROPY ``-sum(p ln p) > t``.
* An object-detection document ``{"prediction": [[class, score, x0, y0, x1, y1], ...]}`` (where the
  original crashes): each box read as the two-way distribution [s, 1-s]. LEAST_CONFIDENCE
  ``max(s) < t`` (no boxes: sampled); MARGIN ``min |2s - 1| < t`` (no boxes: not sampled); ENTROPY
  ``max(-s ln s - (1-s) ln(1-s)) > t`` (no boxes: not sampled).

Every comparison is strict. :func:`read_prediction` refuses, with the reason, what a strategy
cannot read, so a caller learns it from ``publish`` rather than from a status message later.
"""
from __future__ import annotations

import math
import random
from typing import Any, Callable, List, Optional, Tuple

from .config import Strategy

NORMALISE_TOLERANCE = 1e-8

# ("probabilities", p) or ("detections", [(class, score), ...])
Reading = Tuple[str, List[Any]]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def probabilities(values: List[Any]) -> List[float]:
    """The list as probabilities, normalised where needed; ValueError naming what is wrong."""
    if not values:
        raise ValueError("ModelPrediction is an empty list of probabilities")
    if not all(_is_number(v) for v in values):
        raise ValueError("ModelPrediction as a list must hold only finite numbers (class probabilities)")
    if any(v < 0 for v in values):
        raise ValueError("ModelPrediction probabilities must not be negative")
    total = float(sum(values))
    if total <= 0:
        raise ValueError("ModelPrediction probabilities sum to 0")
    if abs(total - 1.0) > NORMALISE_TOLERANCE:
        return [float(v) / total for v in values]
    return [float(v) for v in values]


def detections(document: Any) -> List[Tuple[int, float]]:
    """(class, score) of each row of a detection document; ValueError naming what is wrong."""
    rows = document.get("prediction") if isinstance(document, dict) else None
    if not isinstance(rows, list):
        raise ValueError("ModelPrediction as an object must be a detection document "
                         "{\"prediction\": [[class, score, xmin, ymin, xmax, ymax], ...]}")
    result = []
    for index, row in enumerate(rows):
        if (not isinstance(row, list) or len(row) < 2 or not _is_number(row[0])
                or not _is_number(row[1]) or not 0 <= row[1] <= 1):
            raise ValueError("ModelPrediction row {} must be [class, score in 0..1, ...], got {!r}".format(
                index, row))
        result.append((int(row[0]), float(row[1])))
    return result


def read_prediction(prediction: Any) -> Reading:
    if isinstance(prediction, list):
        return "probabilities", probabilities(prediction)
    return "detections", detections(prediction)


def _entropy(p: List[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def keep_probabilities(strategy: Strategy, p: List[float]) -> bool:
    name, t = strategy.name, strategy.threshold
    if name == "LEAST_CONFIDENCE":
        return max(p) < t
    if name == "MARGIN":
        top = sorted(p, reverse=True)
        return (top[0] - (top[1] if len(top) > 1 else 0.0)) < t
    if name == "ENTROPY":
        return _entropy(p) > t
    raise ValueError("unknown sampling strategy {!r}".format(name))


def keep_detections(strategy: Strategy, scores: List[float]) -> bool:
    name, t = strategy.name, strategy.threshold
    if name == "LEAST_CONFIDENCE":
        return not scores or max(scores) < t
    if name == "MARGIN":
        return bool(scores) and min(abs(2 * s - 1) for s in scores) < t
    if name == "ENTROPY":
        return bool(scores) and max(_entropy([s, 1 - s]) for s in scores) > t
    raise ValueError("unknown sampling strategy {!r}".format(name))


def keep(strategy: Optional[Strategy], prediction: Any,
         rng: Callable[[], float] = random.random) -> bool:
    """Whether the sample is kept; no strategy keeps every sample."""
    if strategy is None:
        return True
    if strategy.name == "RANDOM_SAMPLING":
        return rng() < strategy.rate
    kind, values = read_prediction(prediction)
    if kind == "probabilities":
        return keep_probabilities(strategy, values)
    return keep_detections(strategy, [score for _, score in values])
