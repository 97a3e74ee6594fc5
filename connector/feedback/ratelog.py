"""A log line that repeats at most once per interval, with the count of what it held back.

A feedback service that stays away, or a broker that is down for hours, must cost one clear line
now and then, not one per request.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict


class RateLimitedLog(object):
    def __init__(self, logger: logging.Logger, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: Dict[str, float] = {}
        self._held: Dict[str, int] = {}

    def warning(self, key: str, message: str, *args: Any) -> bool:
        """Log `message` unless `key` was logged less than the interval ago; True if logged."""
        with self._lock:
            now = self._clock()
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            held = self._held.pop(key, 0)
            self._last[key] = now
        if held:
            message += " ({} similar message(s) held back in the last {:g} s)".format(held, self.interval_s)
        self.logger.warning(message, *args)
        return True
