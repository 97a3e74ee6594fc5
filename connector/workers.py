"""Inference worker processes and their supervision (after gunicorn's arbiter).

The model runs in a child process that loads it once and then answers requests. The supervisor
sends each request's compressed image bytes down a pipe (decoding happens in the worker, so no
pixel array ever crosses a process boundary), waits for the answer with a deadline, and when the
worker hangs or dies, kills and reaps it and starts a fresh one. Only the request in flight fails;
the next one is served by the replacement.
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
from typing import Any, Dict, Optional, Tuple

from .errors import ConnectorError

log = logging.getLogger("connector.workers")

class WorkerError(ConnectorError):
    """The worker could not answer: it died, hung past the deadline, or could not start."""


class InferenceTimeoutError(WorkerError):
    pass


class WorkerCrashedError(WorkerError):
    pass


def _worker_main(conn: Connection, model_path: str, device: str, max_pixels: int,
                 service_name: str) -> None:
    """Child process: load the model once, then answer (content_type, body) requests forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when workers stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from .engine import Engine
    from .logs import configure_logging
    configure_logging(service_name)
    try:
        engine = Engine.from_model_dir(model_path, device, max_pixels)
    except ConnectorError as e:
        conn.send(("failed", type(e).__name__, str(e)))
        return
    conn.send(("ready", engine.backend.name, engine.backend.device))
    while True:
        try:
            content_type = conn.recv()
            body = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the supervisor went away
        try:
            conn.send(("ok", engine.infer_text(body, content_type)))
        except ConnectorError as e:
            conn.send(("error", type(e).__name__, str(e)))


def _child_environment() -> Dict[str, str]:
    # The child must import this very package even where the host program put it on sys.path by
    # hand (a Lambda's code directory), so its parent directory goes first on PYTHONPATH.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


class Worker:
    """One child process and the supervisor's end of a socket pair to it.

    The child is a fresh interpreter (`python -m connector.workers`), not a fork: the supervisor
    runs HTTP and runtime threads whose locks a fork would copy mid-use, and multiprocessing's
    spawn would re-import the host program's __main__ (a Greengrass runtime) in the child.
    """

    def __init__(self, model_path: str, device: str, max_pixels: int, service_name: str) -> None:
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "connector.workers", str(theirs.fileno()), model_path, device,
             str(max_pixels), service_name],
            pass_fds=(theirs.fileno(),), close_fds=True, env=_child_environment())
        theirs.close()
        self.conn = Connection(ours.detach())
        self.backend: Tuple[str, str] = ("", "")

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid

    def wait_ready(self, timeout_s: float) -> None:
        if not self.conn.poll(timeout_s):
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
            raise WorkerError("the inference worker could not load the model: {}".format(message[2]))
        self.backend = (message[1], message[2])

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


class WorkerPool:
    """A supervised inference worker: one request at a time, deadline per request, respawn on failure."""

    def __init__(self, model_path: str, device: str = "cpu", max_pixels: int = 40_000_000,
                 timeout_s: float = 10.0, load_timeout_s: float = 120.0,
                 service_name: str = "connector") -> None:
        self.model_path, self.device, self.max_pixels = model_path, device, max_pixels
        self.timeout_s, self.load_timeout_s, self.service_name = timeout_s, load_timeout_s, service_name
        self.counters: Dict[str, int] = {"restarts": 0, "timeouts": 0, "crashes": 0}
        self.state = "starting"
        self._lock = threading.Lock()  # one request at a time per worker
        self._worker: Optional[Worker] = None
        self._start()

    def _start(self) -> None:
        worker = Worker(self.model_path, self.device, self.max_pixels, self.service_name)
        worker.wait_ready(self.load_timeout_s)
        self._worker = worker
        self.state = "ready"
        log.info("inference worker %d ready (%s on %s)", worker.pid, *worker.backend)

    @property
    def backend(self) -> Tuple[str, str]:
        return self._worker.backend if self._worker else ("", "")

    def _replace(self, reason: str) -> None:
        """Kill and reap the current worker and start another; the caller already failed its request."""
        self.state = "restarting"
        if self._worker is not None:
            self._worker.kill()
        self._worker = None
        self.counters["restarts"] += 1
        log.warning("restarting the inference worker: %s", reason)
        self._start()

    def infer(self, body: bytes, content_type: Optional[str], invocation_id: str = "-") -> Tuple[str, Any]:
        """("ok", text) or ("error", (type name, message)); raises WorkerError when the worker failed."""
        deadline = time.monotonic() + self.timeout_s
        if not self._lock.acquire(timeout=self.timeout_s):
            raise InferenceTimeoutError("the request waited {:.0f} s for the inference worker"
                                        .format(self.timeout_s))
        try:
            if self._worker is None:
                self._start()
            worker = self._worker
            try:
                worker.conn.send(content_type)
                worker.conn.send_bytes(body)
                answered = worker.conn.poll(max(0.0, deadline - time.monotonic()))
                message = worker.conn.recv() if answered else None
            except (EOFError, OSError, BrokenPipeError):
                reason = worker.exit_reason()
                self.counters["crashes"] += 1
                self._replace("worker {} died during invocation {} ({})".format(worker.pid, invocation_id, reason))
                raise WorkerCrashedError("the inference worker died while handling this request "
                                         "({}); it has been restarted".format(reason))
            if message is None:
                self.counters["timeouts"] += 1
                self._replace("invocation {} took longer than {:.0f} s".format(invocation_id, self.timeout_s))
                raise InferenceTimeoutError("no answer within LocalInferenceServiceTimeoutSeconds={:.0f} s; "
                                            "the inference worker was restarted".format(self.timeout_s))
            if message[0] == "ok":
                return "ok", message[1]
            return "error", (message[1], message[2])
        finally:
            self._lock.release()

    def worker_pid(self) -> Optional[int]:
        return self._worker.pid if self._worker else None

    def close(self) -> None:
        with self._lock:
            if self._worker is not None:
                self._worker.kill()
                self._worker = None
            self.state = "stopped"


if __name__ == "__main__":
    _fd, _model, _device, _pixels, _name = sys.argv[1:6]
    _worker_main(Connection(int(_fd)), _model, _device, int(_pixels), _name)
