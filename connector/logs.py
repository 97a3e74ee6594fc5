"""Logging: every line carries the LocalInferenceServiceName (the seed's log prefix)."""
from __future__ import annotations

import logging
import sys
from typing import Optional

FORMAT = "%(asctime)s %(service)s %(levelname)s %(name)s: %(message)s"


class ServiceNameFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = "[{}]".format(self.service)
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
