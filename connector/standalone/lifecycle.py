"""Signals for the standalone commands: SIGTERM/SIGINT stop, SIGHUP reloads the model."""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger("connector.standalone")


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set (the command then drains and exits 0)."""
    stop = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        log.info("received %s: finishing in-flight requests", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def reload_on_sighup(service: Any) -> None:
    """`kill -HUP <pid>` reloads the model in a fresh worker; the old one serves until it is ready."""
    def handle(_signum: int, _frame: Any) -> None:
        service.reload("SIGHUP")

    signal.signal(signal.SIGHUP, handle)


def wait_for(stop: threading.Event) -> None:
    # Wake up regularly: Python runs signal handlers only in the main thread, and only when it runs
    # bytecode; a SIGTERM delivered to another thread would never wake a bare `stop.wait()`.
    while not stop.wait(0.5):
        pass
