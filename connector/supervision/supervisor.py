"""One supervised inference worker (after gunicorn's arbiter): requests, deadlines, memory, respawn
and reload.

A :class:`WorkerSupervisor` owns one :class:`~.process.WorkerProcess` at a time and hands it one
request after another. For each request it sends the compressed image bytes and waits for the
answer with a deadline, watching the worker's resident memory meanwhile. A worker that hangs,
dies or outgrows the memory limit is killed and reaped at once; only the request in flight fails,
and the arbiter thread starts the replacement off that request's path. The arbiter also reloads the
model, on demand or when the model directory changes (:mod:`.reloader`), in a fresh worker that
takes over only once it has loaded.

Deadlines. Without one from the caller, a request has ``timeout_s`` and the supervisor answers
an :class:`InferenceTimeoutError` when it passes. A deadline that comes with the work (the IPC host
in `serve` gives every invocation one) belongs to the host, which answers the caller when it
passes: work that cannot start in time is never sent and fails with :class:`NotRunError`, which
nobody reports to the caller (the host has or will). Caller-visible outcomes are counted by the
service (``requests``) and the host (``board``); a supervisor counts only what happened to its
workers (:data:`COUNTERS`).

States (for health): starting, ready, restarting (no worker: the next request waits for the
replacement within its own deadline), stopped.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, Optional

from ..counters import Counters
from ..errors import (InferenceTimeoutError, MemoryLimitError, NotRunError, WorkerCrashedError,
                      WorkerError, from_worker, shorten)
from .messages import Answer, Request
from .process import WorkerProcess
from .reloader import ModelWatcher
from .arbiter import Arbiter

log = logging.getLogger("connector.supervision")

# How often the supervisor looks at a busy worker's memory. A spike shorter than this can slip
# through; the kernel's own limits (or the OOM killer) then end the worker, which is handled as a
# crash. The decoder's pixel limit keeps the common case, a huge image, from getting that far.
MEMORY_POLL_S = 0.01
# Work with less time left than this is not started: its answer would come after the deadline.
DEADLINE_MARGIN_S = 0.05
COUNTERS = ("restarts", "crashes", "hangs", "memory_limit_exceeded", "reloads", "reload_failures",
            "shed")

Cancelled = Optional[Callable[[], bool]]


def not_started(what: str, timeout_s: float, external: bool, cancelled: Cancelled) -> WorkerError:
    """The error for work that never reached a worker: the caller left, or waited too long."""
    if cancelled is not None and cancelled():
        return NotRunError("the caller stopped waiting before {} was free".format(what), True)
    reason = "the request waited that long behind earlier ones for {}".format(what)
    return NotRunError(reason, False) if external else InferenceTimeoutError(timeout_s, reason)


class _OverMemory(Exception):
    def __init__(self, kb: int) -> None:
        super().__init__(kb)
        self.kb = kb


class WorkerSupervisor:
    """One request at a time, a deadline and a memory limit per request, respawn on failure, and
    model reloads that never drop a request."""

    def __init__(self, model_path: str, device: str = "cpu", max_pixels: int = 40_000_000,
                 timeout_s: float = 10.0, load_timeout_s: float = 120.0,
                 service_name: str = "connector", memory_limit_kb: Optional[int] = None,
                 watch_interval_s: Optional[float] = None, threads: Optional[int] = None,
                 reload_gate: Optional[threading.Lock] = None) -> None:
        self.model_path, self.device, self.max_pixels = model_path, device, max_pixels
        self.threads = threads  # the runtime's threads per inference (None: its default)
        self.timeout_s, self.load_timeout_s, self.service_name = timeout_s, load_timeout_s, service_name
        self.memory_limit_kb = memory_limit_kb
        self.watch_interval_s = watch_interval_s
        self.counters = Counters(COUNTERS)
        # Recent inference time (exponential average), to skip work that would finish only after
        # its caller gave up.
        self.recent_s = 0.0
        self.state = "starting"
        self.last_error: Optional[str] = None  # why the last start or reload failed
        self._busy = threading.Lock()  # one request at a time per worker
        self._cond = threading.Condition(threading.RLock())  # reentrant: reload() runs in signal handlers
        self._worker: Optional[WorkerProcess] = None
        self._stopping = False
        self.watcher = ModelWatcher(model_path)
        # The first load is synchronous: a model that cannot load is a start-up error.
        self._worker = self.spawn()
        self.state = "ready"
        self._arbiter = Arbiter(self, reload_gate or threading.Lock())

    # -- what health reads --------------------------------------------------------------------

    @property
    def backend(self) -> "tuple[str, str]":
        worker = self._worker
        return (worker.ready.backend, worker.ready.device) if worker and worker.ready else ("", "")

    def worker_info(self) -> Dict[str, Any]:
        """The current worker's pid, its memory after loading and its pixel limit."""
        worker = self._worker
        if worker is None or worker.ready is None:
            return {"worker_pid": None}
        return {"worker_pid": worker.pid, "worker_loaded_kb": worker.ready.loaded_kb,
                "max_pixels": worker.ready.max_pixels}

    def worker_pid(self) -> Optional[int]:
        worker = self._worker
        return worker.pid if worker else None

    # -- workers coming and going (the arbiter calls these too) -------------------------------

    def spawn(self) -> WorkerProcess:
        """A worker that has loaded the model directory as it is now."""
        worker = WorkerProcess(self.model_path, self.device, self.max_pixels, self.memory_limit_kb or 0,
                               self.service_name, on_exit=self._worker_exited, threads=self.threads)
        ready = worker.wait_ready(self.load_timeout_s, self.memory_limit_kb)
        log.info("inference worker %d ready (%s on %s, %d KB resident, images up to %d pixels)",
                 worker.pid, ready.backend, ready.device, ready.loaded_kb, ready.max_pixels)
        return worker

    def retire(self, worker: WorkerProcess, reason: str) -> None:
        """Kill and reap `worker` now; the arbiter starts the replacement."""
        worker.kill()
        with self._cond:
            if self._worker is not worker:
                return  # already replaced (a reload switched over meanwhile)
            self._worker = None
            self.state = "restarting"
            self.counters.add("restarts")
            self._cond.notify_all()
        log.warning("restarting the inference worker: %s", reason)

    def retire_if_dead(self) -> None:
        """A worker that died between requests is replaced at once, before a request finds it (a
        request in flight finds out itself, and fails with the reason)."""
        if not self._busy.acquire(blocking=False):
            time.sleep(MEMORY_POLL_S)  # the request in flight retires it
            return
        try:
            self._retire_dead_idle(self._worker)
        finally:
            self._busy.release()

    def _retire_dead_idle(self, worker: Optional[WorkerProcess]) -> bool:
        if worker is None or worker.alive():
            return False
        self.counters.add("crashes")
        self.retire(worker, "worker {} died while idle ({})".format(worker.pid, worker.exit_reason()))
        return True

    def _worker_exited(self, worker: WorkerProcess) -> None:
        """A worker process ended (its exit watcher says so): wake the arbiter now."""
        with self._cond:
            self._cond.notify_all()

    # -- serving requests ---------------------------------------------------------------------

    def infer(self, body: bytes, content_type: Optional[str], invocation_id: str = "-",
              deadline: Optional[float] = None, cancelled: Cancelled = None) -> Answer:
        """The worker's answer, its timings with the time spent waiting here (``queue``); raises
        the request's error (connector.errors) otherwise.

        :param deadline: when the caller stops waiting (time.monotonic), owned by whoever gave it
            (see the module docstring); default timeout_s from now, owned here.
        :param cancelled: says when the caller left; work is never sent after that.
        """
        external = deadline is not None
        at = deadline if deadline is not None else time.monotonic() + self.timeout_s
        return self.infer_until(body, content_type, invocation_id, at, external, cancelled)

    def infer_until(self, body: bytes, content_type: Optional[str], invocation_id: str,
                    deadline: float, external: bool, cancelled: Cancelled) -> Answer:
        """:meth:`infer` with the deadline decided: `external` when the caller's deadline
        belongs to somebody else (the pool passes on its own or its caller's)."""
        arrived = time.monotonic()
        if not self._busy.acquire(timeout=max(0.0, deadline - arrived)):
            raise not_started("the inference worker", self.timeout_s, external, cancelled)
        try:
            if cancelled is not None and cancelled():
                raise not_started("the inference worker", self.timeout_s, external, cancelled)
            worker = self._ready_worker(deadline, external)
            self._check_time_left(deadline, external, arrived)
            started = time.monotonic()
            # The worker may take timeout_s from now before it counts as hung: a caller whose
            # deadline comes first is answered by whoever owns that deadline.
            reply = self._run(worker, Request(content_type, invocation_id), body,
                              started + self.timeout_s if external else deadline, external)
            elapsed = time.monotonic() - started
            self.recent_s = elapsed if not self.recent_s else 0.8 * self.recent_s + 0.2 * elapsed
            self._check_memory_after(worker, invocation_id)
        finally:
            self._busy.release()
        if isinstance(reply, Answer):
            return Answer(reply.text, dict(reply.timings, queue=started - arrived))
        raise from_worker(reply.error, reply.message)

    def _check_time_left(self, deadline: float, external: bool, arrived: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= (DEADLINE_MARGIN_S if external else 0.0):
            reason = "the request waited that long for the inference worker"
            raise NotRunError(reason, False) if external else InferenceTimeoutError(self.timeout_s, reason)
        if remaining < self.recent_s:
            # Sent now, it would finish after its caller gave up: the worker goes to the next one.
            self.counters.add("shed")
            reason = ("the request waited {:.1f} s for the inference worker, which takes about {:.1f} s "
                      "a request; it would not finish in time".format(time.monotonic() - arrived,
                                                                      self.recent_s))
            raise NotRunError(reason, False) if external else InferenceTimeoutError(self.timeout_s, reason)

    def _run(self, worker: WorkerProcess, request: Request, body: bytes, hang_deadline: float,
             external: bool) -> Any:
        """Send one request and wait for the worker's reply; a dead, hung or over-memory worker
        is retired and the request fails with why."""
        try:
            worker.send(request, body)
            reply = self._await_reply(worker, hang_deadline)
        except (EOFError, OSError):
            reason = worker.exit_reason()
            self.counters.add("crashes")
            self.retire(worker, "worker {} died during invocation {} ({})".format(
                worker.pid, request.invocation_id, reason))
            raise WorkerCrashedError("the inference worker died while handling this request "
                                     "({}); it is being restarted".format(reason)) from None
        except _OverMemory as e:
            self.counters.add("memory_limit_exceeded")
            self.retire(worker, "worker {} used {} KB during invocation {}, over the limit of {} KB"
                        .format(worker.pid, e.kb, request.invocation_id, self.memory_limit_kb))
            raise MemoryLimitError(
                "the inference worker used {} KB on this request, more than "
                "LocalInferenceServiceMemoryLimitKB={}; it was stopped and is being restarted"
                .format(e.kb, self.memory_limit_kb)) from None
        if reply is None:
            self.counters.add("hangs")
            self.retire(worker, "invocation {} took longer than {:.0f} s".format(
                request.invocation_id, self.timeout_s))
            raise InferenceTimeoutError(self.timeout_s, "the inference worker is being restarted")
        return reply

    def _ready_worker(self, deadline: float, external: bool) -> WorkerProcess:
        with self._cond:
            while True:
                worker = self._worker
                if worker is not None and worker.alive():
                    return worker
                if self._retire_dead_idle(worker):  # died between requests: replace, do not fail on it
                    continue
                if self._stopping:
                    raise WorkerError("the inference service is stopping")
                if self._arbiter_failures() and self.last_error:
                    raise WorkerError("the inference worker cannot be started: {}".format(self.last_error))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reason = "the inference worker was still restarting"
                    raise NotRunError(reason, False) if external else InferenceTimeoutError(
                        self.timeout_s, reason)
                self._cond.wait(remaining)

    def _arbiter_failures(self) -> int:
        arbiter = getattr(self, "_arbiter", None)
        return arbiter.spawn_failures if arbiter is not None else 0

    def _over_limit(self, worker: WorkerProcess) -> Optional[int]:
        """The worker's resident KB when it is over the memory limit, else None."""
        if not self.memory_limit_kb:
            return None
        kb = worker.resident_kb()
        return kb if kb is not None and kb > self.memory_limit_kb else None

    def _await_reply(self, worker: WorkerProcess, deadline: float) -> Optional[Any]:
        """The worker's reply, or None at the deadline; _OverMemory when it outgrows the limit."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not self.memory_limit_kb:
                return worker.receive() if worker.poll(remaining) else None
            if worker.poll(min(remaining, MEMORY_POLL_S)):
                return worker.receive()
            kb = self._over_limit(worker)
            if kb is not None:
                raise _OverMemory(kb)

    def _check_memory_after(self, worker: WorkerProcess, invocation_id: str) -> None:
        # Memory a request left behind (a leak, a grown arena) counts too; the answer is good, so it
        # is still given, and the next request gets a fresh worker.
        kb = self._over_limit(worker)
        if kb is not None:
            self.counters.add("memory_limit_exceeded")
            self.retire(worker, "worker {} kept {} KB after invocation {}, over the limit of {} KB"
                        .format(worker.pid, kb, invocation_id, self.memory_limit_kb))

    # -- reloading and stopping ---------------------------------------------------------------

    def reload(self, reason: str = "requested") -> None:
        """Load the model directory again in a fresh worker and switch over once it is ready.
        Returns at once; safe to call from a signal handler."""
        self._arbiter.request_reload(reason)

    def switch_to(self, worker: WorkerProcess, fingerprint: Any) -> bool:
        """Make a freshly loaded `worker` the serving one (a reload's last step); the old one
        finishes the request it may be answering first. False when stopping."""
        with self._cond:
            if self._stopping:
                worker.kill()
                return False
            old, self._worker = self._worker, worker
            self.watcher.loaded(fingerprint)
            self.state, self.last_error = "ready", None
            self._cond.notify_all()
        if old is not None:
            with self._busy:
                old.kill()
        return True

    def adopt(self, worker: WorkerProcess, fingerprint: Any) -> bool:
        """Take `worker` as the replacement of a retired one; False (and it is killed) when
        stopping or when a reload got there first."""
        with self._cond:
            if self._stopping or self._worker is not None:
                worker.kill()
                return False
            self._worker = worker
            self.watcher.loaded(fingerprint)
            self.state, self.last_error = "ready", None
            self._cond.notify_all()
            return True

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._arbiter.join(5.0)  # mid-load, it kills what it started once it sees _stopping
        with self._busy, self._cond:
            if self._worker is not None:
                self._worker.kill()
                self._worker = None
            self.state = "stopped"

    @property
    def cond(self) -> threading.Condition:
        return self._cond

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def current(self) -> Optional[WorkerProcess]:
        return self._worker

    def set_failed(self, error: str) -> None:
        with self._cond:
            self.last_error = shorten(error)
            self._cond.notify_all()  # waiting requests fail now with this reason
