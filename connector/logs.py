"""Logging: every line carries the LocalInferenceServiceName (the seed's log prefix) and the
invocation id of the request being handled on that thread ("-" outside any request)."""
from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from typing import Iterator, Optional

from . import settings

REQUEST_LOG_ENV = "CONNECTOR_REQUEST_LOG_LEVEL"
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
    # The per-request line (connector.service) is INFO; an operator turns it down (WARNING, ERROR)
    # or keeps it while the rest is quieter, independently of the service's own level.
    request_level = settings.get(REQUEST_LOG_ENV).upper()
    requests = logging.getLogger("connector.requests")
    if request_level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        requests.setLevel(request_level)
    else:
        requests.setLevel(logging.NOTSET)
        if request_level:
            logging.getLogger("connector.logs").warning(
                "%s=%r is not a log level (DEBUG, INFO, WARNING, ERROR); the request log follows "
                "the service's level", REQUEST_LOG_ENV, request_level[:20])
