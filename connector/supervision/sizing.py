"""How many inference workers, and how many threads each: CONNECTOR_INFERENCE_WORKERS, or auto.

Auto takes one worker per CPU, at most 4, and only as many as fit in memory: each worker may grow
to LocalInferenceServiceMemoryLimitKB, a reload loads one more beside them (the supervisors share
one reload gate, so only one at a time), and the supervisor process needs SUPERVISOR_KB. The memory
is the smaller of the machine's MemAvailable and what this process's memory cgroup still allows
(:mod:`.memory`); a container sized for one worker and a reload (the Greengrass V1 function
definition's MemorySize, ``python -m connector.tools.deploy memory-size``) therefore gets one
worker, as does a machine where nothing can be read, and a Greengrass Lambda whose container hides
its cgroup (no /sys, the default there).

Threads: the first worker's runtime keeps its default (every core) and a free first worker takes
the next request, so a request that comes alone runs as fast as with one worker; the others get
cores / n threads each (at least 1) and take the overflow (measured in docs/performance.md).
"""
from __future__ import annotations

import os
import re
from typing import Mapping, NamedTuple, Optional

from .. import settings
from ..errors import ParameterError, excerpt
from .memory import cgroup_room_kb, cgroup_visible, mem_available_kb

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
    raw = settings.get(WORKERS_ENV, environ)
    if raw.lower() == "auto":
        return None
    if not re.match(r"^[0-9]{1,2}$", raw) or not 1 <= int(raw) <= MAX_WORKERS:
        raise ParameterError("{} must be a number of workers from 1 to {} or auto, got {}".format(
            WORKERS_ENV, MAX_WORKERS, excerpt(raw, 40)))
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
