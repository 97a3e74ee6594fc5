"""Several supervised inference workers behind the interface of one WorkerPool.

One worker decodes, runs and encodes one request after another; with two or more, consecutive
requests overlap (one decodes while another runs the model), which is what makes the service
answer more requests a second than a loop around the engine. Each worker is a full
:class:`connector.workers.WorkerPool` (its own process, model copy, memory limit, deadline,
respawn and reload), so a crash, hang or memory kill costs only the request on that worker while
the others keep serving. A request goes to a free worker; when none is free it waits, within its
deadline, for the first that frees up.

The number comes from ``CONNECTOR_INFERENCE_WORKERS``: 1-16, or ``auto`` (the default). Auto
takes one worker per CPU, at most 4, and only as many as fit in memory: each worker may grow to
LocalInferenceServiceMemoryLimitKB, a reload loads one more beside them (the pools share one
reload gate, so only one at a time), and the supervisor needs SUPERVISOR_KB. The memory is the
smaller of the machine's MemAvailable and what this process's memory cgroup still allows
(connector.memory_room); a container sized for one worker and a reload (the Greengrass V1
function definition's MemorySize, `python -m connector.tools.deploy memory-size`) therefore gets one
worker, as does a machine where nothing can be read, and a Greengrass Lambda whose container
hides its cgroup (no /sys, the default there).

Threads: the first worker's runtime keeps its default (every core) and a free first worker takes
the next request, so a request that comes alone runs as fast as with one worker; the others get
cores / n threads each (at least 1) and take the overflow. Measured on 2 cores (demo-ssd, bench/
perf.py): every worker at cores / n made one client 0.66-0.70x the in-process engine loop (one
worker: 0.77-0.91x) and 4 clients 1.22-1.28x; every worker at all cores 0.78-0.88x and 1.14-1.18x;
this split 0.80x and 1.17-1.20x.
"""
from __future__ import annotations

import os
import re
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

from .errors import ParameterError
from .memory_room import cgroup_room_kb, cgroup_visible, mem_available_kb
from .workers import WorkerPool

WORKERS_ENV = "CONNECTOR_INFERENCE_WORKERS"
MAX_WORKERS = 16
AUTO_MAX_WORKERS = 4
# What the supervisor (host, connector threads, requests in flight) may still grow by beside the
# workers: it is already resident when the memory is read, ~70 MB, and under overload it grew by
# ~100 MB more (README, "Hostile clients").
SUPERVISOR_KB = 80 * 1024


def cores() -> int:
    """The machine's CPUs. Not this thread's affinity: a runtime loaded in this process may have
    pinned the calling thread to one core (TVM, under DLR, did: see backends.dlr_backend)."""
    return os.cpu_count() or 1


def requested_workers(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The number of inference workers the environment asks for, None for auto (also when unset);
    ParameterError naming the variable for anything that is not 1-16 or auto."""
    raw = (os.environ if environ is None else environ).get(WORKERS_ENV, "").strip()
    if raw == "" or raw.lower() == "auto":
        return None
    if not re.match(r"^[0-9]{1,2}$", raw) or not 1 <= int(raw) <= MAX_WORKERS:
        raise ParameterError("{} must be a number of workers from 1 to {} or auto, got {!r}".format(
            WORKERS_ENV, MAX_WORKERS, raw[:40]))
    return int(raw)


def workers_in_memory(room_kb: int, limit_kb: int) -> int:
    """How many workers, each allowed `limit_kb`, fit in `room_kb` beside the supervisor's
    growth and the one more worker that a reload loads beside them."""
    return max(0, (room_kb - SUPERVISOR_KB) // max(1, limit_kb) - 1)


def auto_workers(cpus: int, room_kb: Optional[int], limit_kb: int) -> int:
    """One per CPU, at most AUTO_MAX_WORKERS, at most what fits in `room_kb`; 1 where the room
    is unknown (None) or too small even for one."""
    if room_kb is None:
        return 1
    return max(1, min(cpus, AUTO_MAX_WORKERS, workers_in_memory(room_kb, limit_kb)))


def memory_room_kb(available_kb: Optional[int], cgroup_kb: Optional[int]) -> Optional[int]:
    """The smaller of what the machine and the cgroup allow; None where neither is known."""
    known = [kb for kb in (available_kb, cgroup_kb) if kb is not None]
    return min(known) if known else None


def _cores(cpus: int) -> str:
    return "1 core" if cpus == 1 else "{} cores".format(cpus)


def _gb(kb: Optional[int]) -> str:
    return "unreadable" if kb is None else "{:.1f} GB".format(kb * 1024 / 1e9)


class WorkerChoice(NamedTuple):
    count: int
    why: str  # for the start-up log
    over_memory: bool  # an explicit count more than fits in memory


def choose_workers(limit_kb: int, environ: Optional[Mapping[str, str]] = None, root: str = "/",
                   cpus: Optional[int] = None, hidden_cgroup_is_unknown: bool = False) -> WorkerChoice:
    """The number of workers for a service whose per-worker limit is `limit_kb`, and why: what
    CONNECTOR_INFERENCE_WORKERS asks for, else auto_workers with the memory read under `root`.

    `hidden_cgroup_is_unknown`: where no cgroup of this process can be seen, its memory is
    unknown rather than unlimited. The Greengrass Lambda entry sets it: its container's limit (the
    function's MemorySize) is invisible without /sys, and the machine's MemAvailable would
    then start workers the container cannot hold."""
    requested = requested_workers(environ)
    cpus = cores() if cpus is None else cpus
    available, cgroup = mem_available_kb(root), cgroup_room_kb(root)
    hidden = hidden_cgroup_is_unknown and not cgroup_visible(root)
    room = None if hidden else memory_room_kb(available, cgroup)
    fit = None if room is None else workers_in_memory(room, limit_kb)
    memory = "{} (MemAvailable {}, cgroup {}) at LocalInferenceServiceMemoryLimitKB={}".format(
        "memory unknown" if fit is None else "memory for {} workers and a reload".format(fit), _gb(available),
        "not visible" if hidden else "limit none" if cgroup is None else "allows " + _gb(cgroup), limit_kb)
    if requested is None:
        return WorkerChoice(auto_workers(cpus, room, limit_kb),
                            "{} auto: {}, {}".format(WORKERS_ENV, _cores(cpus), memory), False)
    return WorkerChoice(requested, "{}={}; {}, {}".format(WORKERS_ENV, requested, _cores(cpus), memory),
                        fit is not None and requested > max(1, fit))


def threads_per_worker(count: int, index: int) -> Optional[int]:
    """The runtime threads of worker `index` (from 0) of `count`: None (the runtime's default,
    every core) for the first, which serves whenever it is free; a share of the cores for the
    others, which serve only while it is busy."""
    return max(1, cores() // count) if count > 1 and index > 0 else None


class WorkerSet:
    """`count` WorkerPools, offered as one (infer, reload, close, state, counters, health)."""

    def __init__(self, count: int, model_path: str, **pool_args: Any) -> None:
        if count < 1:
            raise ValueError("at least one worker, not {}".format(count))
        pool_args.setdefault("reload_gate", threading.Lock())
        self.pools: List[WorkerPool] = []
        try:
            for index in range(count):  # one after another: loading is the memory peak
                threads = pool_args.get("threads", threads_per_worker(count, index))
                self.pools.append(WorkerPool(model_path, **dict(pool_args, threads=threads)))
        except Exception:
            self.close()
            raise
        self._idle = set(range(count))  # indexes of the workers free now
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
        info["workers"] = len(self.pools)
        if len(self.pools) > 1:
            info["worker_pids"] = self.worker_pids()
            info["worker_requests"] = list(self._taken)
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
            # The free worker that comes first: the first one runs with every core.
            index = min(self._idle) if self._idle else None
            if index is not None:
                self._idle.remove(index)
                self._taken[index] += 1
        if index is None:  # the same outcomes as one busy worker's, counted the same way
            raise first.not_started("an inference worker", deadline is not None, cancelled)
        pool = self.pools[index]
        self._served_by.pool, self._served_by.waited = pool, time.monotonic() - arrived
        try:
            return pool.infer(body, content_type, invocation_id, deadline, cancelled)
        finally:
            with self._cond:
                self._idle.add(index)
                self._cond.notify()

    def reload(self, reason: str = "requested") -> None:
        for pool in self.pools:
            pool.reload(reason)

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
