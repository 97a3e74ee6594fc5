"""One inference worker process and the supervisor's end of a socket pair to it.

The child is a fresh interpreter (``python -m connector.supervision.child``), not a fork: the
supervisor runs HTTP and runtime threads whose locks a fork would copy mid-use, and
multiprocessing's spawn would re-import the host program's __main__ (a Greengrass runtime) in the
child.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Callable, Dict, Optional

from ..errors import MemoryLimitError, WorkerCrashedError, WorkerError, shorten
from ..model.backends.base import THREADS_ENV
from ..settings import worker_environment
from .child import ChildArgs
from .memory import resident_kb
from .messages import LoadFailed, Ready, Reply, Request

# While a model loads, the memory watchdog looks this often (loading is not a spike: it grows
# and stays).
LOAD_MEMORY_POLL_S = 0.05


def _child_environment(threads: Optional[int] = None) -> Dict[str, str]:
    # The child must import this very package even where the host program put it on sys.path by
    # hand (a Lambda's code directory), so its parent directory goes first on PYTHONPATH.
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = worker_environment()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    if threads:
        # Several workers share the cores: each runtime gets its share, or their thread pools
        # would fight over every core and wait for each other's descheduled threads.
        env[THREADS_ENV] = env["TVM_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    return env


class WorkerProcess:
    """A started child: load it with :meth:`wait_ready`, then :meth:`send` and :meth:`receive`."""

    def __init__(self, model_path: str, device: str, max_pixels: int, memory_limit_kb: int,
                 service_name: str, on_exit: Optional[Callable[["WorkerProcess"], None]] = None,
                 threads: Optional[int] = None) -> None:
        ours, theirs = socket.socketpair()
        args = ChildArgs(theirs.fileno(), model_path, device, max_pixels, memory_limit_kb,
                         service_name)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "connector.supervision.child"] + args.argv(),
            pass_fds=(theirs.fileno(),), close_fds=True, env=_child_environment(threads))
        theirs.close()
        self.conn = Connection(ours.detach())
        self.ready: Optional[Ready] = None
        if on_exit is not None and hasattr(os, "waitid"):
            threading.Thread(target=self._watch_exit, args=(on_exit,), daemon=True,
                             name="worker-{}-exit".format(self.pid)).start()

    def _watch_exit(self, on_exit: Callable[["WorkerProcess"], None]) -> None:
        """Tell the supervisor the moment the process ends, idle or not (WNOWAIT: Popen still
        reaps it, so poll() and exit_reason() keep working)."""
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

    def wait_ready(self, timeout_s: float, memory_limit_kb: Optional[int] = None) -> Ready:
        """Wait for the model to load; the memory limit holds meanwhile (a model, or a model.yaml,
        that makes the loader grow without bound is killed at the limit, not at the OOM killer)."""
        deadline = time.monotonic() + timeout_s
        while not self.conn.poll(min(LOAD_MEMORY_POLL_S, max(0.0, deadline - time.monotonic()))):
            kb = self.resident_kb() if memory_limit_kb else None
            if kb is not None and memory_limit_kb is not None and kb > memory_limit_kb:
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
            outcome = self.conn.recv()
        except EOFError:
            self.kill()
            raise WorkerCrashedError("the inference worker died while loading the model ({})"
                                     .format(self.exit_reason()))
        if isinstance(outcome, LoadFailed):
            self.kill()
            raise WorkerError("the inference worker could not load the model: {}".format(
                shorten(outcome.message)))
        self.ready = outcome
        return outcome

    def send(self, request: Request, body: bytes) -> None:
        self.conn.send(request)
        self.conn.send_bytes(body)

    def poll(self, timeout_s: float) -> bool:
        return self.conn.poll(timeout_s)

    def receive(self) -> Reply:
        return self.conn.recv()

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
