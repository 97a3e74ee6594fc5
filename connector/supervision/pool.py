"""The pool of inference workers: several :class:`~.supervisor.WorkerSupervisor`, offered as one.

One worker decodes, runs and encodes one request after another; with two or more, consecutive
requests overlap (one decodes while another runs the model), which is what makes the service
answer more requests a second than a loop around the engine. Each supervisor owns its own process,
model copy, memory limit, deadline, respawn and reload, so a crash, hang or memory kill costs only
the request on that worker while the others keep serving. A request goes to the first free worker
(the first one runs with every core, see :mod:`.sizing`); when none is free it waits, within its
deadline, for the first that frees up.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from .messages import Answer
from .sizing import threads_per_worker
from .supervisor import Cancelled, WorkerSupervisor, not_started


class WorkerPool:
    """`count` supervised workers: infer, reload, close, state, counters and health."""

    def __init__(self, count: int, model_path: str, **supervisor_args: Any) -> None:
        if count < 1:
            raise ValueError("at least one worker, not {}".format(count))
        supervisor_args.setdefault("reload_gate", threading.Lock())
        self.supervisors: List[WorkerSupervisor] = []
        try:
            for index in range(count):  # one after another: loading is the memory peak
                threads = supervisor_args.get("threads", threads_per_worker(count, index))
                self.supervisors.append(
                    WorkerSupervisor(model_path, **dict(supervisor_args, threads=threads)))
        except Exception:
            self.close()
            raise
        self._idle = set(range(count))  # indexes of the workers free now
        self._cond = threading.Condition()
        self._taken = [0] * count  # requests each worker was given (health: the spread)

    # -- what health reads ------------------------------------------------------------------

    @property
    def state(self) -> str:
        """ready while any worker is ready (the others are being replaced meanwhile)."""
        states = [s.state for s in self.supervisors]
        return "ready" if "ready" in states else states[0]

    @property
    def backend(self) -> Tuple[str, str]:
        for supervisor in self.supervisors:
            if supervisor.backend[0]:
                return supervisor.backend
        return ("", "")

    @property
    def counters(self) -> Dict[str, int]:
        """Every worker's counters added up (each counted by its own supervisor)."""
        total: Dict[str, int] = {}
        for supervisor in self.supervisors:
            for key, value in supervisor.counters.snapshot().items():
                total[key] = total.get(key, 0) + value
        return total

    @property
    def last_error(self) -> Optional[str]:
        return next((s.last_error for s in self.supervisors if s.last_error), None)

    def worker_info(self) -> Dict[str, Any]:
        """The first worker's fields (as with one worker), plus every worker's pid."""
        info = self.supervisors[0].worker_info()
        info["workers"] = len(self.supervisors)
        if len(self.supervisors) > 1:
            info["worker_pids"] = self.worker_pids()
            info["worker_requests"] = list(self._taken)
        return info

    def worker_pids(self) -> List[Optional[int]]:
        return [s.worker_pid() for s in self.supervisors]

    # -- serving ----------------------------------------------------------------------------

    def infer(self, body: bytes, content_type: Optional[str], invocation_id: str = "-",
              deadline: Optional[float] = None, cancelled: Cancelled = None) -> Answer:
        """WorkerSupervisor.infer on the first worker that is free; the wait for it counts as
        the answer's ``queue`` time."""
        if len(self.supervisors) == 1:
            return self.supervisors[0].infer(body, content_type, invocation_id, deadline, cancelled)
        first = self.supervisors[0]
        arrived = time.monotonic()
        external = deadline is not None
        limit = deadline if deadline is not None else arrived + first.timeout_s
        index = self._take_free(limit, cancelled)
        if index is None:
            raise not_started("an inference worker", first.timeout_s, external, cancelled)
        waited = time.monotonic() - arrived
        try:
            answer = self.supervisors[index].infer_until(body, content_type, invocation_id, limit,
                                                         external, cancelled)
        finally:
            with self._cond:
                self._idle.add(index)
                self._cond.notify()
        return Answer(answer.text, dict(answer.timings, queue=answer.timings.get("queue", 0.0) + waited))

    def _take_free(self, limit: float, cancelled: Cancelled) -> Optional[int]:
        """The index of the first free worker, taken; None when `limit` passed or the caller left."""
        with self._cond:
            while not self._idle:
                remaining = limit - time.monotonic()
                if remaining <= 0 or (cancelled is not None and cancelled()):
                    return None
                self._cond.wait(min(remaining, 0.5))  # wakes to see a caller that left
            # The free worker that comes first: the first one runs with every core.
            index = min(self._idle)
            self._idle.remove(index)
            self._taken[index] += 1
            return index

    def reload(self, reason: str = "requested") -> None:
        for supervisor in self.supervisors:
            supervisor.reload(reason)

    def close(self) -> None:
        for supervisor in self.supervisors:
            supervisor.close()
