"""The inference worker's own program: ``python -m connector.supervision.child FD MODEL ...``.

It loads the model once, warms it up, measures its memory, says :class:`Ready` (or
:class:`LoadFailed`) and then answers one request after another on the socket `FD` until the
supervisor goes away. A fresh interpreter, not a fork: see :mod:`connector.supervision.process`.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from ..errors import ConnectorError, MemoryLimitError
from .memory import resident_kb
from .messages import Answer, Failure, LoadFailed, Ready, Request

log = logging.getLogger("connector.supervision.child")


class ChildArgs(NamedTuple):
    """The child's command line, in order (process.WorkerProcess writes it)."""
    fd: int
    model_path: str
    device: str
    max_pixels: int
    memory_limit_kb: int  # 0: no limit
    service_name: str

    def argv(self) -> "list[str]":
        return [str(value) for value in self]

    @classmethod
    def parse(cls, argv: "list[str]") -> "ChildArgs":
        fd, model, device, pixels, limit_kb, name = argv
        return cls(int(fd), model, device, int(pixels), int(limit_kb), name)


def _ignore_stop_signals() -> None:
    # The supervisor decides when workers stop (it kills them itself): a terminal's Ctrl-C and
    # systemd's stop signal every process of the service at once, and a worker ending on them
    # would look like a crash to its supervisor, which would start a new one while shutting down.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: a reload is for the supervisor
        signal.signal(signum, signal.SIG_IGN)


def load(args: ChildArgs) -> "tuple[Any, Any]":
    """(the engine, Ready) or (None, LoadFailed)."""
    from ..model import imaging
    from ..model.engine import Engine
    try:
        engine = Engine.from_model_dir(args.model_path, args.device, args.max_pixels)
        engine.warm_up()  # so that the memory measured next is what serving needs
    except ConnectorError as e:
        return None, LoadFailed(type(e).__name__, str(e))
    loaded_kb = resident_kb(os.getpid()) or 0
    if args.memory_limit_kb:
        headroom_kb = args.memory_limit_kb - loaded_kb
        if headroom_kb <= 0:
            return None, LoadFailed(MemoryLimitError.__name__, (
                "the worker uses {} KB once the model is loaded, more than "
                "LocalInferenceServiceMemoryLimitKB={}; raise the limit".format(
                    loaded_kb, args.memory_limit_kb)))
        # An image whose decoding could not fit in what the model leaves free is refused from its
        # header, before a byte of it is decoded.
        engine.max_pixels = min(engine.max_pixels, imaging.pixel_limit_for_memory(headroom_kb))
        # The same budget in bytes, for kinds that cost more than the cheapest (progressive JPEG).
        engine.max_decode_bytes = headroom_kb * 1024
    return engine, Ready(engine.backend.name, engine.backend.device, engine.max_pixels, loaded_kb)


def serve(conn: Connection, engine: Any) -> None:
    """Answer requests until the supervisor goes away."""
    from ..logs import invocation
    while True:
        try:
            request = conn.recv()
            body = conn.recv_bytes()
        except (EOFError, OSError):
            return
        with invocation(request.invocation_id):
            conn.send(answer(engine, request, body))


def answer(engine: Any, request: Request, body: bytes) -> "Answer | Failure":
    try:
        return Answer(engine.infer_text(body, request.content_type), engine.last_timings)
    except ConnectorError as e:
        return Failure(type(e).__name__, str(e))
    except Exception as e:  # noqa: BLE001 - a bug costs this request, not the loaded model
        log.exception("unexpected failure in the inference worker")
        return Failure(ConnectorError.__name__, "internal error in the inference worker ({}: {}); "
                       "the worker keeps serving".format(type(e).__name__, e))


def main(argv: "list[str]") -> None:
    args = ChildArgs.parse(argv)
    _ignore_stop_signals()
    from ..logs import configure_logging
    configure_logging(args.service_name)
    conn = Connection(args.fd)
    engine, outcome = load(args)
    try:
        conn.send(outcome)
    except OSError:
        return  # the supervisor went away while the model loaded (it is shutting down)
    if engine is not None:
        serve(conn, engine)


if __name__ == "__main__":
    main(sys.argv[1:])
