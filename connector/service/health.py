"""The detailed ``/healthz`` document, built from named sections that ``/metrics`` reads too.

The top holds what the service is (``state``, ``service``, ``model``, ``function_arn``); each
section is what one part owns and counts, never a merge of two owners' counts:

* ``requests``    - how the service finished each request (ok, refused, timeout, abandoned,
  failed): :class:`connector.service.inference.SupervisedService`;
* ``worker``      - the inference workers: state, backend, pids, restarts, crashes, hangs, memory
  kills, reloads, shed work (:mod:`connector.supervision`);
* ``board``       - what the IPC host answered for the service: timeouts at the caller's
  deadline, callers that left, late results, busy refusals, the queue (:mod:`connector.ipc.workboard`);
* ``connections`` - open connections and the guard's evictions, refusals and deadlines;
* ``feedback``, ``feeder``, ``mqtt`` - the services beside the connector, when they run.

A section that fails to describe itself shows its error instead, and the rest stands.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional

from ..errors import shorten

log = logging.getLogger("connector.service.health")

Describe = Callable[[], Dict[str, Any]]


class Health:
    """The top fields and the sections, in the order they were added."""

    def __init__(self, **top: Any) -> None:
        self.top: Dict[str, Any] = dict(top)
        self._sections: Dict[str, Describe] = {}

    def add(self, name: str, describe: Optional[Describe]) -> None:
        """Add section `name` (None: the part does not run here)."""
        if describe is not None:
            self._sections[name] = describe

    def document(self) -> Dict[str, Any]:
        document = dict(self.top)
        for name, describe in self._sections.items():
            try:
                document[name] = describe()
            except Exception as exc:  # one part's failure must not hide the others'
                log.exception("health section %s failed", name)
                document[name] = {"error": shorten(exc, 200)}
        return document
