"""Inline runs that outlive their caller's deadline: another thread takes over the connection.

A post_work whose invocation the posting request thread runs itself (see
:mod:`connector.ipc.workboard`) keeps that thread, and so the caller's keep-alive connection,
busy until the handler returns. Its caller's get_work_result, sent on the same connection, is
read only then; a caller must still be answered at its deadline, however long the handler takes.
So the server loop (every 0.1 s) looks at the runs in progress, and when one is past its
deadline a new thread serves the rest of that connection (it reads the get_work_result, which
answers with the function timeout, and whatever follows); the running thread, once its handler
returns, waits for that thread instead of touching the connection again.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, Optional

log = logging.getLogger(__name__)


class _Run(object):
    __slots__ = ("deadline", "serve_rest", "takeover")

    def __init__(self, deadline: float, serve_rest: Callable[[], None]) -> None:
        self.deadline = deadline
        self.serve_rest = serve_rest
        self.takeover: Optional[threading.Thread] = None


class InlineRuns(object):
    """The inline runs in progress on keep-alive connections, by invocation id."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._runs: Dict[str, _Run] = {}
        self.takeovers = 0

    def started(self, key: str, deadline: float, serve_rest: Callable[[], None]) -> None:
        """A run began; `serve_rest` serves the connection from its next request until it closes."""
        with self._lock:
            self._runs[key] = _Run(deadline, serve_rest)

    def ended(self, key: str) -> Optional[threading.Thread]:
        """The run's handler returned: None when the connection is still this thread's, else the
        thread that took it over (join it before letting the connection go)."""
        with self._lock:
            run = self._runs.pop(key, None)
        return run.takeover if run is not None else None

    def check(self) -> None:
        """Hand the connections of runs past their deadline to new threads (the server loop)."""
        now = self._clock()
        with self._lock:  # started under the lock: `ended` never sees a thread not yet started
            for run in self._runs.values():
                if run.takeover is not None or now < run.deadline:
                    continue
                takeover = threading.Thread(target=run.serve_rest, name="ipc-takeover", daemon=True)
                try:
                    takeover.start()
                except RuntimeError:  # no thread: the caller is answered when the handler returns
                    log.warning("could not start a thread to answer a caller at its deadline")
                    continue
                run.takeover = takeover
                self.takeovers += 1
