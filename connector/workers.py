"""Inference worker processes and their supervision (after gunicorn's arbiter).

The model runs in a child process that loads it once and then answers requests. The supervisor
sends each request's compressed image bytes down a socket (decoding happens in the worker, so no
pixel array ever crosses a process boundary) and waits for the answer with a deadline, watching
the worker's resident memory meanwhile. A worker that hangs, dies or outgrows the memory limit is
killed and reaped at once; only the request in flight fails, and the arbiter thread starts the
replacement off that request's path. The arbiter also reloads the model, on demand or when the
model directory changes, in a fresh worker that takes over only once it has loaded.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, Optional, Tuple

from .model.backends.base import THREADS_ENV
from .errors import ConnectorError

log = logging.getLogger("connector.workers")

# How often the supervisor looks at a busy worker's memory. A spike shorter than this can slip
# through; the kernel's own limits (or the OOM killer) then end the worker, which is handled as a
# crash. The decoder's pixel limit keeps the common case, a huge image, from getting that far.
MEMORY_POLL_S = 0.01
# While a model loads, the same watchdog, less often (loading is not a spike: it grows and stays).
LOAD_MEMORY_POLL_S = 0.05
RESPAWN_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# Error texts that reach health documents and log lines are cut to this (a broken model.yaml can
# make a loader's message arbitrarily long).
MAX_ERROR_CHARS = 500
# Work with less time left than this is left to whoever owns the deadline to answer: an early
# answer of our own could cross the deadline on its way and be counted twice.
DEADLINE_MARGIN_S = 0.05
TIMEOUT_MESSAGE = "no answer within LocalInferenceServiceTimeoutSeconds={seconds:g} s: {why}"


def cut(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text`, or its start and a note of how much was left out."""
    text = str(text)
    if len(text) <= limit:
        return text
    return "{}... ({} more characters)".format(text[:limit], len(text) - limit)


class WorkerError(ConnectorError):
    """The worker could not answer: it died, hung past the deadline, or could not start."""


class InferenceTimeoutError(WorkerError):
    pass


class WorkerCrashedError(WorkerError):
    pass


class MemoryLimitError(WorkerError):
    pass


class AbandonedError(WorkerError):
    """The caller stopped waiting before the worker was free; the work was never sent."""


def _worker_main(conn: Connection, model_path: str, device: str, max_pixels: int,
                 memory_limit_kb: int, service_name: str) -> None:
    """Child process: load the model once, then answer (content_type, body) requests forever."""
    # The supervisor decides when workers stop (it kills them itself): a terminal's Ctrl-C and
    # systemd's stop signal every process of the service at once, and a worker ending on them
    # would look like a crash to its supervisor, which would start a new one while shutting down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload signal is for the supervisor
    from .model import imaging
    from .model.engine import Engine
    from .logs import configure_logging, invocation
    configure_logging(service_name)
    try:
        engine = Engine.from_model_dir(model_path, device, max_pixels)
        engine.warm_up()  # so that the memory measured next is what serving needs
    except ConnectorError as e:
        conn.send(("failed", type(e).__name__, str(e)))
        return
    loaded_kb = resident_kb(os.getpid()) or 0
    if memory_limit_kb:
        headroom_kb = memory_limit_kb - loaded_kb
        if headroom_kb <= 0:
            conn.send(("failed", "MemoryLimitError",
                       "the worker uses {} KB once the model is loaded, more than "
                       "LocalInferenceServiceMemoryLimitKB={}; raise the limit".format(loaded_kb, memory_limit_kb)))
            return
        # An image whose decoding could not fit in what the model leaves free is refused from its
        # header, before a byte of it is decoded.
        engine.max_pixels = min(engine.max_pixels, imaging.pixel_limit_for_memory(headroom_kb))
        # The same budget in bytes, for kinds that cost more than the cheapest (progressive JPEG).
        engine.max_decode_bytes = headroom_kb * 1024
    try:
        conn.send(("ready", engine.backend.name, engine.backend.device, engine.max_pixels, loaded_kb))
    except OSError:
        return  # the supervisor went away while the model loaded (it is shutting down)
    while True:
        try:
            content_type, invocation_id = conn.recv()
            body = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the supervisor went away
        with invocation(invocation_id):
            try:
                text = engine.infer_text(body, content_type)
                conn.send(("ok", text, engine.last_timings))
            except ConnectorError as e:
                conn.send(("error", type(e).__name__, str(e)))
            except Exception as e:  # noqa: BLE001 - a bug costs this request, not the loaded model
                log.exception("unexpected failure in the inference worker")
                conn.send(("error", "ConnectorError", "internal error in the inference worker ({}: {}); "
                           "the worker keeps serving".format(type(e).__name__, e)))


def _child_environment(threads: Optional[int] = None) -> Dict[str, str]:
    # The child must import this very package even where the host program put it on sys.path by
    # hand (a Lambda's code directory), so its parent directory goes first on PYTHONPATH.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    if threads:
        # Several workers share the cores: each runtime gets its share, or their thread pools
        # would fight over every core and wait for each other's descheduled threads.
        env[THREADS_ENV] = env["TVM_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    return env


def resident_kb(pid: int) -> Optional[int]:
    """VmRSS of a process in KiB (Linux /proc), None where it cannot be read."""
    try:
        with open("/proc/{}/status".format(pid), "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


# What a model directory's loader reads; anything else (model.onnx.partial being written beside
# the model, editor backups) is not a new version.
MODEL_FILE_SUFFIXES = (".onnx", ".so", ".json", ".params", ".meta", ".yaml", ".yml", ".txt")


def model_fingerprint(path: str) -> Optional[Tuple[Any, ...]]:
    """What changes when a model directory's content is replaced: the directory a symlink points
    to, and each model file's name, inode, size and modification time. None while unreadable."""
    try:
        real = os.path.realpath(path)
        entries = []
        for name in sorted(n for n in os.listdir(real) if n.endswith(MODEL_FILE_SUFFIXES)):
            st = os.stat(os.path.join(real, name))
            entries.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
        return (real, tuple(entries))
    except OSError:
        return None


class Worker:
    """One child process and the supervisor's end of a socket pair to it.

    The child is a fresh interpreter (`python -m connector.workers`), not a fork: the supervisor
    runs HTTP and runtime threads whose locks a fork would copy mid-use, and multiprocessing's
    spawn would re-import the host program's __main__ (a Greengrass runtime) in the child.
    """

    def __init__(self, model_path: str, device: str, max_pixels: int, memory_limit_kb: int,
                 service_name: str, on_exit: Optional[Callable[["Worker"], None]] = None,
                 threads: Optional[int] = None) -> None:
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "connector.workers", str(theirs.fileno()), model_path, device,
             str(max_pixels), str(memory_limit_kb), service_name],
            pass_fds=(theirs.fileno(),), close_fds=True, env=_child_environment(threads))
        theirs.close()
        self.conn = Connection(ours.detach())
        self.backend: Tuple[str, str] = ("", "")
        self.max_pixels = 0
        self.loaded_kb = 0
        if on_exit is not None and hasattr(os, "waitid"):
            threading.Thread(target=self._watch_exit, args=(on_exit,), daemon=True,
                             name="worker-{}-exit".format(self.pid)).start()

    def _watch_exit(self, on_exit: Callable[["Worker"], None]) -> None:
        """Tell the pool the moment the process ends, idle or not (WNOWAIT: Popen still reaps it,
        so poll() and exit_reason() keep working)."""
        try:
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        except OSError:
            pass  # already reaped
        on_exit(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def resident_kb(self) -> Optional[int]:
        return resident_kb(self.pid)

    def wait_ready(self, timeout_s: float, memory_limit_kb: Optional[int] = None) -> None:
        """Wait for the model to load; the memory limit holds meanwhile (a model, or a model.yaml,
        that makes the loader grow without bound is killed at the limit, not at the OOM killer)."""
        deadline = time.monotonic() + timeout_s
        while not self.conn.poll(min(LOAD_MEMORY_POLL_S, max(0.0, deadline - time.monotonic()))):
            kb = self.resident_kb() if memory_limit_kb else None
            if kb is not None and kb > memory_limit_kb:
                self.kill()
                raise MemoryLimitError(
                    "the inference worker used {} KB while loading the model, more than "
                    "LocalInferenceServiceMemoryLimitKB={}; it was stopped (raise the limit if the model "
                    "needs it)".format(kb, memory_limit_kb))
            if time.monotonic() >= deadline:
                self.kill()
                raise WorkerError("the inference worker did not load the model within {:.0f} s"
                                  .format(timeout_s))
        try:
            message = self.conn.recv()
        except EOFError:
            self.kill()
            raise WorkerCrashedError("the inference worker died while loading the model ({})"
                                     .format(self.exit_reason()))
        if message[0] != "ready":
            self.kill()
            raise WorkerError("the inference worker could not load the model: {}".format(cut(message[2])))
        self.backend = (message[1], message[2])
        self.max_pixels, self.loaded_kb = message[3], message[4]

    def send(self, content_type: Optional[str], invocation_id: str, body: bytes) -> None:
        self.conn.send((content_type, invocation_id))
        self.conn.send_bytes(body)

    def exit_reason(self) -> str:
        try:
            code = self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            return "killed by {}".format(signal.Signals(-code).name)
        return "exit status {}".format(code)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5.0)
        self.conn.close()


class _OverMemory(Exception):
    def __init__(self, kb: int) -> None:
        super().__init__(kb)
        self.kb = kb


class WorkerPool:
    """A supervised inference worker: one request at a time, a deadline and a memory limit per
    request, respawn on failure, and model reloads that never drop a request.

    States (for health): starting, ready, restarting (no worker: the next request waits for the
    replacement within its own deadline), stopped.
    """

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
        # The last answered request's queue/decode/inference seconds, per calling thread.
        self._phase_times = threading.local()
        self.counters: Dict[str, int] = {"restarts": 0, "timeouts": 0, "crashes": 0,
                                         "memory_limit_exceeded": 0, "reloads": 0,
                                         "reload_failures": 0, "hangs": 0, "abandoned": 0,
                                         "shed": 0}
        # Recent inference time (exponential average), to skip work that would finish only after
        # its caller gave up.
        self.recent_s = 0.0
        self.state = "starting"
        self.last_error: Optional[str] = None  # why the last start or reload failed
        self._counter_lock = threading.Lock()
        self._busy = threading.Lock()  # one request at a time per worker
        self._cond = threading.Condition(threading.RLock())  # reentrant: reload() runs in signal handlers
        self._worker: Optional[Worker] = None
        self._stopping = False
        self._reload_reason: Optional[str] = None
        self._reloading = False
        # Held while a new version loads beside the serving worker. Several pools (WorkerSet)
        # share one, so a reload holds one worker more than the set, never twice as many.
        self._reload_gate = reload_gate or threading.Lock()
        self._spawn_failures = 0
        # The first load is synchronous: a model that cannot load is a start-up error.
        # Taken before loading: a version that lands during the load differs from it, so it is loaded too.
        self._fingerprint = model_fingerprint(self.model_path)
        self._worker = self._spawn()
        self._failed_fingerprint: Optional[Tuple[Any, ...]] = None
        self.state = "ready"
        self._arbiter = threading.Thread(target=self._arbiter_loop, name="worker-arbiter", daemon=True)
        self._arbiter.start()

    def _count(self, name: str) -> None:
        with self._counter_lock:  # several request threads and the arbiter count at once
            self.counters[name] += 1

    # -- starting workers -------------------------------------------------------------------

    def _spawn(self) -> Worker:
        """A worker that has loaded the model directory as it is now."""
        worker = Worker(self.model_path, self.device, self.max_pixels, self.memory_limit_kb or 0,
                        self.service_name, on_exit=self._worker_exited, threads=self.threads)
        worker.wait_ready(self.load_timeout_s, self.memory_limit_kb)
        log.info("inference worker %d ready (%s on %s, %d KB resident, images up to %d pixels)",
                 worker.pid, worker.backend[0], worker.backend[1], worker.loaded_kb, worker.max_pixels)
        return worker

    @property
    def backend(self) -> Tuple[str, str]:
        worker = self._worker
        return worker.backend if worker else ("", "")

    def worker_info(self) -> Dict[str, Any]:
        """For health: the current worker's pid, its memory after loading and its pixel limit."""
        worker = self._worker
        if worker is None:
            return {"worker_pid": None}
        return {"worker_pid": worker.pid, "worker_loaded_kb": worker.loaded_kb,
                "max_pixels": worker.max_pixels}

    def phase_times(self) -> Dict[str, float]:
        """Queue, decode and inference seconds of this thread's last answered request."""
        times = getattr(self._phase_times, "phases", {})
        self._phase_times.phases = {}
        return times

    def worker_pid(self) -> Optional[int]:
        worker = self._worker
        return worker.pid if worker else None

    def _retire(self, worker: Worker, reason: str) -> None:
        """Kill and reap `worker` now; the arbiter starts the replacement. The caller fails its request."""
        worker.kill()
        with self._cond:
            if self._worker is not worker:
                return  # already replaced (a reload switched over meanwhile)
            self._worker = None
            self.state = "restarting"
            self._count("restarts")
            self._cond.notify_all()
        log.warning("restarting the inference worker: %s", reason)

    # -- serving requests -------------------------------------------------------------------

    def infer(self, body: bytes, content_type: Optional[str], invocation_id: str = "-",
              deadline: Optional[float] = None,
              cancelled: Optional[Callable[[], bool]] = None) -> Tuple[str, Any]:
        """("ok", text) or ("error", (type name, message)); raises WorkerError when the worker failed.

        :param deadline: when the caller stops waiting (time.monotonic); default timeout_s from
            now. Work is never sent after it, nor once `cancelled()` says the caller left. A
            given deadline belongs to whoever answers the caller at it (the IPC host), so the
            timeouts it causes are counted there, not here.
        """
        now = time.monotonic()
        external = deadline is not None
        deadline = deadline if deadline is not None else now + self.timeout_s
        if not self._busy.acquire(timeout=max(0.0, deadline - now)):
            raise self.not_started("the inference worker", external, cancelled, left=False)
        try:
            if cancelled is not None and cancelled():
                raise self.not_started("the inference worker", external, cancelled)
            try:
                worker = self._ready_worker(deadline, count=not external)
            except InferenceTimeoutError as e:
                raise self._past_deadline(str(e).split(": ", 1)[-1], external, cancelled)
            remaining = deadline - time.monotonic()
            if remaining <= DEADLINE_MARGIN_S:
                raise self._past_deadline("the request waited that long for the inference worker",
                                          external, cancelled)
            if remaining < self.recent_s:
                # Sent now, it would finish after its caller gave up: the caller is told now (and
                # counted here: nobody else sees this timeout), the worker goes to the next one.
                self._count("shed")
                raise self._timed_out("the request waited {:.1f} s for the inference worker, which "
                                      "takes about {:.1f} s a request; it would not finish in time"
                                      .format(time.monotonic() - now, self.recent_s))
            # The worker may take timeout_s from now before it counts as hung: a caller whose
            # deadline comes first is answered by whoever owns that deadline.
            started = time.monotonic()
            hang_deadline = started + self.timeout_s if external else deadline
            try:
                worker.send(content_type, invocation_id, body)
                message = self._await_answer(worker, hang_deadline)
            except (EOFError, OSError):
                reason = worker.exit_reason()
                self._count("crashes")
                self._retire(worker, "worker {} died during invocation {} ({})".format(
                    worker.pid, invocation_id, reason))
                raise WorkerCrashedError("the inference worker died while handling this request "
                                         "({}); it is being restarted".format(reason))
            except _OverMemory as e:
                self._count("memory_limit_exceeded")
                self._retire(worker, "worker {} used {} KB during invocation {}, over the limit of {} KB"
                             .format(worker.pid, e.kb, invocation_id, self.memory_limit_kb))
                raise MemoryLimitError(
                    "the inference worker used {} KB on this request, more than "
                    "LocalInferenceServiceMemoryLimitKB={}; it was stopped and is being restarted"
                    .format(e.kb, self.memory_limit_kb))
            if message is None:
                self._count("hangs")
                self._retire(worker, "invocation {} took longer than {:.0f} s".format(
                    invocation_id, self.timeout_s))
                raise self._timed_out("the inference worker is being restarted", count=not external)
            elapsed = time.monotonic() - started
            self.recent_s = elapsed if not self.recent_s else 0.8 * self.recent_s + 0.2 * elapsed
            self._check_memory_after(worker, invocation_id)
            if message[0] == "ok":
                self._phase_times.phases = dict(message[2] if len(message) > 2 else {}, queue=started - now)
                return "ok", message[1]
            return "error", (message[1], message[2])
        finally:
            self._busy.release()

    def not_started(self, worker: str, external: bool, cancelled: Optional[Callable[[], bool]],
                    left: Optional[bool] = None) -> WorkerError:
        """The error, counted, for work that never reached `worker` ("the inference worker", or
        one of several): AbandonedError when the caller left, else the timeout of a request that
        waited behind earlier ones. `left` says which when the caller already knows."""
        if left is None:
            left = cancelled is not None and cancelled()
        if left:
            self._count("abandoned")
            return AbandonedError("the caller stopped waiting before {} was free".format(worker))
        return self._past_deadline("the request waited that long behind earlier ones for {}".format(
            worker), external, cancelled)

    def _ready_worker(self, deadline: float, count: bool = True) -> Worker:
        with self._cond:
            while True:
                worker = self._worker
                if worker is not None and worker.alive():
                    return worker
                if worker is not None:  # died between requests: replace it, do not fail on it
                    self._count("crashes")
                    self._retire(worker, "worker {} died while idle ({})".format(
                        worker.pid, worker.exit_reason()))
                    continue
                if self._stopping:
                    raise WorkerError("the inference service is stopping")
                if self._spawn_failures and self.last_error:
                    raise WorkerError("the inference worker cannot be started: {}".format(self.last_error))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timed_out("the inference worker was still restarting", count=count)
                self._cond.wait(remaining)

    def _past_deadline(self, why: str, external: bool,
                       cancelled: Optional[Callable[[], bool]]) -> InferenceTimeoutError:
        """The timeout of a request whose deadline passed. When the deadline came with the work,
        its owner (the IPC host) answers the caller and counts it: wait (briefly) until it has, so
        that this error never races it to the caller uncounted."""
        if external and cancelled is not None:
            limit = time.monotonic() + 1.0
            while not cancelled() and time.monotonic() < limit:
                time.sleep(0.005)
        return self._timed_out(why, count=not external)

    def _timed_out(self, why: str, count: bool = True) -> InferenceTimeoutError:
        if count:
            self._count("timeouts")
        return InferenceTimeoutError(TIMEOUT_MESSAGE.format(seconds=self.timeout_s, why=why))

    def _over_limit(self, worker: Worker) -> Optional[int]:
        """The worker's resident KB when it is over the memory limit, else None."""
        if not self.memory_limit_kb:
            return None
        kb = worker.resident_kb()
        return kb if kb is not None and kb > self.memory_limit_kb else None

    def _await_answer(self, worker: Worker, deadline: float) -> Optional[Any]:
        """The worker's answer, or None at the deadline; _OverMemory when it outgrows the limit."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not self.memory_limit_kb:
                return worker.conn.recv() if worker.conn.poll(remaining) else None
            if worker.conn.poll(min(remaining, MEMORY_POLL_S)):
                return worker.conn.recv()
            kb = self._over_limit(worker)
            if kb is not None:
                raise _OverMemory(kb)

    def _check_memory_after(self, worker: Worker, invocation_id: str) -> None:
        # Memory a request left behind (a leak, a grown arena) counts too; the answer is good, so it
        # is still given, and the next request gets a fresh worker.
        kb = self._over_limit(worker)
        if kb is not None:
            self._count("memory_limit_exceeded")
            self._retire(worker, "worker {} kept {} KB after invocation {}, over the limit of {} KB"
                         .format(worker.pid, kb, invocation_id, self.memory_limit_kb))

    # -- the arbiter: respawn, watch, reload -------------------------------------------------

    def reload(self, reason: str = "requested") -> None:
        """Load the model directory again in a fresh worker and switch over once it is ready.
        Returns at once; safe to call from a signal handler."""
        with self._cond:
            self._reload_reason = reason
            self._cond.notify_all()

    def _arbiter_loop(self) -> None:
        candidate: Optional[Tuple[Any, ...]] = None
        while True:
            with self._cond:
                tick = min(self.watch_interval_s or 1.0, 1.0)
                if self._worker is None and self._spawn_failures:
                    tick = RESPAWN_BACKOFF_S[min(self._spawn_failures, len(RESPAWN_BACKOFF_S)) - 1]
                    self._cond.wait(tick)  # back off before trying a failing start again
                else:
                    self._cond.wait_for(lambda: self._stopping or self._worker is None
                                        or not self._worker.alive()
                                        or (self._reload_reason is not None and not self._reloading),
                                        tick)
                if self._stopping:
                    return
                need_worker = self._worker is None
                dead = self._worker is not None and not self._worker.alive()
                reason = None
                if not self._reloading:
                    reason, self._reload_reason = self._reload_reason, None
            if dead:
                self._replace_dead_idle()
                continue
            if need_worker:
                self._respawn()
                continue
            if reason is None and self.watch_interval_s and not self._reloading:
                reason, candidate = self._watch(candidate)
            if reason is not None:
                self._start_reload(reason)

    def _worker_exited(self, worker: Worker) -> None:
        """A worker process ended (its exit watcher says so): wake the arbiter now."""
        with self._cond:
            self._cond.notify_all()

    def _replace_dead_idle(self) -> None:
        """A worker that died between requests is replaced at once, before any request finds it
        (a request in flight finds out itself, and fails with the reason)."""
        if not self._busy.acquire(blocking=False):
            time.sleep(MEMORY_POLL_S)  # the request in flight retires it
            return
        try:
            worker = self._worker
            if worker is not None and not worker.alive():
                self._count("crashes")
                self._retire(worker, "worker {} died while idle ({})".format(worker.pid,
                                                                           worker.exit_reason()))
        finally:
            self._busy.release()

    def _start_reload(self, reason: str) -> None:
        # Its own thread: loading can take minutes, and a crashed worker must be replaced meanwhile.
        with self._cond:
            self._reloading = True
        threading.Thread(target=self._reload_then_done, args=(reason,), name="worker-reload",
                         daemon=True).start()

    def _reload_then_done(self, reason: str) -> None:
        try:
            with self._reload_gate:
                if not self._stopping:
                    self._reload(reason)
        finally:
            with self._cond:
                self._reloading = False
                self._cond.notify_all()

    def _respawn(self) -> None:
        fingerprint = model_fingerprint(self.model_path)
        try:
            worker = self._spawn()
        except Exception as e:  # noqa: BLE001 - an arbiter that died would leave no worker, ever
            with self._cond:
                self._spawn_failures += 1
                self.last_error = cut(e)
                self._cond.notify_all()  # waiting requests fail now with this reason
            log.error("could not start an inference worker (attempt %d): %s", self._spawn_failures,
                      cut(e))
            return
        with self._cond:
            if self._stopping or self._worker is not None:  # stopping, or a reload got there first
                worker.kill()
                return
            self._worker, self._fingerprint = worker, fingerprint
            self._spawn_failures, self.state, self.last_error = 0, "ready", None
            self._cond.notify_all()

    def _watch(self, candidate: Optional[Tuple[Any, ...]]) -> "Tuple[Optional[str], Optional[Tuple[Any, ...]]]":
        """Reload once a change in the model directory has held still for one interval, so a copy
        still in progress is not loaded."""
        now = model_fingerprint(self.model_path)
        if now is None or now == self._fingerprint or now == self._failed_fingerprint:
            return None, None
        if now != candidate:
            return None, now  # changed: look again next tick
        return "the model directory {} changed".format(self.model_path), None

    def _reload(self, reason: str) -> None:
        log.info("reloading the model (%s)", reason)
        fingerprint = model_fingerprint(self.model_path)
        try:
            worker = self._spawn()
        except Exception as e:  # noqa: BLE001 - whatever the new version does, the old one serves on
            self._count("reload_failures")
            self.last_error = cut(e)
            # The version that was tried; one written meanwhile differs from it and is tried next.
            self._failed_fingerprint = fingerprint
            log.error("reload failed, the previous model keeps serving: %s", cut(e))
            return
        with self._cond:
            if self._stopping:
                worker.kill()
                return
            old, self._worker, self._fingerprint = self._worker, worker, fingerprint
            self._failed_fingerprint, self.state, self._spawn_failures = None, "ready", 0
            self.last_error = None
            self._count("reloads")
            self._cond.notify_all()
        if old is not None:
            with self._busy:  # let the request the old worker may be answering finish first
                old.kill()
        log.info("switched to the reloaded model (worker %d)", worker.pid)

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


if __name__ == "__main__":
    _fd, _model, _device, _pixels, _limit_kb, _name = sys.argv[1:7]
    _worker_main(Connection(int(_fd)), _model, _device, int(_pixels), int(_limit_kb), _name)
