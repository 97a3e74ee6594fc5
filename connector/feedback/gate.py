"""Which accepted samples a config keeps: conditions, strategy, cooldown and budgets, in that order.

Each config has one :class:`Gate`. Its verdict is the status a dropped sample gets:

* ``sample_dropped_by_condition``: no box (for a probability list: the top class) has a class in
  ``conditions.classes`` and a score inside ``[min-score, max-score]`` (inclusive band);
* ``sample_dropped_by_strategy``: the sampling strategy said no (SPEC section 6);
* ``sample_dropped_by_cooldown``: a sample of this config was kept less than
  ``conditions.cooldown-seconds`` ago;
* ``sample_dropped_by_budget``: keeping it would exceed ``budget.samples-per-minute|hour|day`` or
  ``budget.bytes-per-day`` (sliding windows over the kept samples).

Budgets and cooldown count what this process kept; they start afresh after a restart.
"""
from __future__ import annotations

import collections
import random
import threading
import time
from typing import Any, Callable, Deque, Optional, Tuple

from . import sampling
from .config import FeedbackConfig

KEPT = "kept"
DROPPED_BY_CONDITION = "sample_dropped_by_condition"
DROPPED_BY_STRATEGY = "sample_dropped_by_strategy"
DROPPED_BY_COOLDOWN = "sample_dropped_by_cooldown"
DROPPED_BY_BUDGET = "sample_dropped_by_budget"

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


def check_readable(config: FeedbackConfig, prediction: Any) -> None:
    """ValueError when the config's strategy or conditions cannot read this prediction."""
    reads = config.conditions.filters or (config.strategy is not None
                                          and config.strategy.name != "RANDOM_SAMPLING")
    if reads:
        sampling.read_prediction(prediction)


def _matches(config: FeedbackConfig, prediction: Any) -> bool:
    conditions = config.conditions
    kind, values = sampling.read_prediction(prediction)
    if kind == "probabilities":
        top = max(range(len(values)), key=values.__getitem__)
        candidates = [(top, values[top])]
    else:
        candidates = values
    for cls, score in candidates:
        if conditions.classes is not None and cls not in conditions.classes:
            continue
        if conditions.min_score is not None and score < conditions.min_score:
            continue
        if conditions.max_score is not None and score > conditions.max_score:
            continue
        return True
    return False


class Gate(object):
    def __init__(self, config: FeedbackConfig, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        self.config = config
        self._clock = clock
        self._rng = rng
        self._lock = threading.Lock()
        self._kept: Deque[Tuple[float, int]] = collections.deque()  # (time, bytes), last day
        budget = config.budget
        # Without a budget nothing reads _kept: do not hold a day of kept samples for nothing.
        self._budgeted = any(v is not None for v in (budget.per_minute, budget.per_hour,
                                                     budget.per_day, budget.bytes_per_day))
        self._last_kept: Optional[float] = None

    def decide(self, prediction: Any, size: int) -> str:
        """KEPT or the dropped status; a kept sample counts against cooldown and budgets."""
        config = self.config
        if config.conditions.filters and not _matches(config, prediction):
            return DROPPED_BY_CONDITION
        if not sampling.keep(config.strategy, prediction, self._rng):
            return DROPPED_BY_STRATEGY
        with self._lock:
            now = self._clock()
            cooldown = config.conditions.cooldown_s
            if cooldown and self._last_kept is not None and now - self._last_kept < cooldown:
                return DROPPED_BY_COOLDOWN
            if not self._within_budget(now, size):
                return DROPPED_BY_BUDGET
            if self._budgeted:
                self._kept.append((now, size))
            self._last_kept = now
            return KEPT

    def _within_budget(self, now: float, size: int) -> bool:
        budget = self.config.budget
        while self._kept and now - self._kept[0][0] >= DAY:
            self._kept.popleft()
        for limit, window in ((budget.per_minute, MINUTE), (budget.per_hour, HOUR),
                              (budget.per_day, DAY)):
            if limit is not None and sum(1 for t, _ in self._kept if now - t < window) + 1 > limit:
                return False
        if budget.bytes_per_day is not None and sum(n for _, n in self._kept) + size > budget.bytes_per_day:
            return False
        return True
