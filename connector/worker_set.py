"""Several supervised inference workers behind the interface of one WorkerPool.

One worker decodes, runs and encodes one request after another; with two or more, consecutive
requests overlap (one decodes while another runs the model), which is what makes the service
answer more requests a second than a loop around the engine. Each worker is a full
:class:`connector.workers.WorkerPool` (its own process, model copy, memory limit, deadline,
respawn and reload), so a crash, hang or memory kill costs only the request on that worker while
the others keep serving. A request goes to a free worker; when none is free it waits, within its
deadline, for the first that frees up.

The number comes from ``CONNECTOR_INFERENCE_WORKERS`` (1-16, or ``auto``; default 1).
LocalInferenceServiceMemoryLimitKB holds for each worker, so n workers may use n times that:
the default stays 1 so that an existing deployment's memory budget holds after an upgrade;
``auto`` takes one worker per CPU, at most 4. With n > 1 each worker's runtime gets
cores / n threads (at least 1), so the workers do not fight over the cores.
"""
from __future__ import annotations

import os
import re
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .errors import ParameterError
from .workers import AbandonedError, WorkerPool

WORKERS_ENV = "CONNECTOR_INFERENCE_WORKERS"
MAX_WORKERS = 16
AUTO_MAX_WORKERS = 4


def cores() -> int:
    """The machine's CPUs. Not this thread's affinity: a runtime loaded in this process may have
    pinned the calling thread to one core (TVM, under DLR, did: see backends.dlr_backend)."""
    return os.cpu_count() or 1


def worker_count(environ: Optional[Mapping[str, str]] = None) -> int:
    """The number of inference workers the environment asks for; ParameterError naming the
    variable for anything that is not 1-16 or auto."""
    raw = (os.environ if environ is None else environ).get(WORKERS_ENV, "").strip()
    if raw == "":
        return 1
    if raw.lower() == "auto":
        return max(1, min(AUTO_MAX_WORKERS, cores()))
    if not re.match(r"^[0-9]{1,2}$", raw) or not 1 <= int(raw) <= MAX_WORKERS:
        raise ParameterError("{} must be a number of workers from 1 to {} or auto, got {!r}".format(
            WORKERS_ENV, MAX_WORKERS, raw[:40]))
    return int(raw)


def threads_per_worker(count: int) -> Optional[int]:
    """Each worker's share of the cores; None (the runtime's default) for a single worker."""
    return max(1, cores() // count) if count > 1 else None


class WorkerSet:
    """`count` WorkerPools, offered as one (infer, reload, close, state, counters, health)."""

    def __init__(self, count: int, model_path: str, **pool_args: Any) -> None:
        if count < 1:
            raise ValueError("at least one worker, not {}".format(count))
        pool_args.setdefault("threads", threads_per_worker(count))
        self.pools: List[WorkerPool] = []
        try:
            for _ in range(count):  # one after another: loading is the memory peak
                self.pools.append(WorkerPool(model_path, **pool_args))
        except Exception:
            self.close()
            raise
        self._idle = list(self.pools)
        self._cond = threading.Condition()
        self._taken = [0] * count  # requests each worker was given (health: the spread)
        self._served_by = threading.local()  # the pool that served this thread's last request

    # -- what the service reads --------------------------------------------------------------

    @property
    def state(self) -> str:
        """ready while any worker is ready (the others are being replaced meanwhile)."""
        states = [pool.state for pool in self.pools]
        return "ready" if "ready" in states else states[0]

    @property
    def backend(self) -> Tuple[str, str]:
        for pool in self.pools:
            if pool.backend[0]:
                return pool.backend
        return ("", "")

    @property
    def counters(self) -> Dict[str, int]:
        total: Dict[str, int] = {}
        for pool in self.pools:
            for key, value in pool.counters.items():
                total[key] = total.get(key, 0) + value
        return total

    @property
    def last_error(self) -> Optional[str]:
        return next((pool.last_error for pool in self.pools if pool.last_error), None)

    def worker_info(self) -> Dict[str, Any]:
        """The first worker's fields (as with one worker), plus every worker's pid."""
        info = self.pools[0].worker_info()
        if len(self.pools) > 1:
            info["worker_pids"] = self.worker_pids()
            info["worker_requests"] = list(self._taken)
            info["workers"] = len(self.pools)
        return info

    def worker_pid(self) -> Optional[int]:
        return self.pools[0].worker_pid()

    def worker_pids(self) -> List[Optional[int]]:
        return [pool.worker_pid() for pool in self.pools]

    def phase_times(self) -> Dict[str, float]:
        """Queue, decode and inference seconds of this thread's last answered request, from the
        worker that answered it; the queue includes the wait for a free worker."""
        times = getattr(self._served_by, "pool", self.pools[0]).phase_times()
        if "queue" in times:
            times["queue"] += getattr(self._served_by, "waited", 0.0)
        return times

    # -- serving -----------------------------------------------------------------------------

    def infer(self, body: bytes, content_type: Optional[str], invocation_id: str = "-",
              deadline: Optional[float] = None,
              cancelled: Optional[Callable[[], bool]] = None) -> Tuple[str, Any]:
        """WorkerPool.infer on the first worker that is free."""
        if len(self.pools) == 1:
            self._served_by.pool, self._served_by.waited = self.pools[0], 0.0
            return self.pools[0].infer(body, content_type, invocation_id, deadline, cancelled)
        first = self.pools[0]
        arrived = time.monotonic()
        limit = deadline if deadline is not None else time.monotonic() + first.timeout_s
        with self._cond:
            while not self._idle:
                remaining = limit - time.monotonic()
                if remaining <= 0 or (cancelled is not None and cancelled()):
                    break
                self._cond.wait(min(remaining, 0.5))  # wakes to see a caller that left
            pool = self._idle.pop() if self._idle else None
            if pool is not None:
                self._taken[self.pools.index(pool)] += 1
        if pool is None:  # the same outcomes as one busy worker's, counted the same way
            if cancelled is not None and cancelled():
                first._count("abandoned")
                raise AbandonedError("the caller stopped waiting before an inference worker was free")
            raise first._past_deadline("the request waited that long behind earlier ones for the "
                                       "inference workers", deadline is not None, cancelled)
        self._served_by.pool, self._served_by.waited = pool, time.monotonic() - arrived
        try:
            return pool.infer(body, content_type, invocation_id, deadline, cancelled)
        finally:
            with self._cond:
                self._idle.append(pool)
                self._cond.notify()

    def reload(self, reason: str = "requested") -> None:
        for pool in self.pools:
            pool.reload(reason)

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
