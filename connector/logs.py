"""Logging: every line carries the LocalInferenceServiceName (the seed's log prefix) and the
invocation id of the request being handled on that thread ("-" outside any request)."""
from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from typing import Iterator, Optional

FORMAT = "%(asctime)s %(service)s inv=%(invocation)s %(levelname)s %(name)s: %(message)s"

# A context variable, not a global: several requests are handled at once on different threads,
# and each thread starts with its own context.
_invocation: "contextvars.ContextVar[str]" = contextvars.ContextVar("invocation", default="-")


@contextlib.contextmanager
def invocation(invocation_id: Optional[str]) -> Iterator[None]:
    """Tag every log line written inside the block (on this thread) with `invocation_id`."""
    token = _invocation.set(str(invocation_id or "-"))
    try:
        yield
    finally:
        _invocation.reset(token)


class ServiceNameFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = "[{}]".format(self.service)
        record.invocation = _invocation.get()
        return True


def configure_logging(service: str, level: int = logging.INFO, file: Optional[str] = None) -> None:
    """Send this package's logs to stderr (and `file`), each line prefixed with `service`."""
    handlers = [logging.StreamHandler(sys.stderr)]
    if file:
        handlers.append(logging.FileHandler(file, encoding="utf-8"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.addFilter(ServiceNameFilter(service))
        h.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(h)
    root.setLevel(level)
