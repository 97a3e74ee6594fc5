"""A set of named counters that many threads add to and health documents read.

Each counter has one owner (the object that holds the :class:`Counters`); readers get a copy.
"""
from __future__ import annotations

import threading
from typing import Dict, Iterable


class Counters:
    def __init__(self, names: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._values: Dict[str, int] = dict.fromkeys(names, 0)

    def add(self, name: str, amount: int = 1) -> int:
        """Add to counter `name` (declared or new); its new value."""
        with self._lock:
            value = self._values.get(name, 0) + amount
            self._values[name] = value
            return value

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._values[name]

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._values)
