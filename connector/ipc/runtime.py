"""The Lambda runtime loop: what a Greengrass core's Python runtime does for a long-lived function.

``run_lambda`` polls get_work, builds a Lambda ``context``, calls ``handler(event, context)`` and
posts what it returns (post_work_result) or what it raised (post_handler_err, seen by callers as a
``Handled`` function error). It needs nothing from the core, so the same loop serves a function
inside a real Greengrass V1 core (client from the Lambda environment), under the Greengrass V2
Lambda launcher, or against the standalone host, in a thread or in another process.

The event is passed as bytes, as for a function whose encoding type is ``binary``. A result is
encoded as the core's runtimes do for such functions: bytes as they are, str as UTF-8, anything else
as JSON (so a dict arrives as its JSON text, and None as ``null``).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from ..logs import invocation
from . import protocol
from .client import IPCClient, IPCError, WorkItem

log = logging.getLogger(__name__)

Handler = Callable[[bytes, "LambdaContext"], Any]

_BACKOFF_START_S = 0.05


class NoAnswer(Exception):
    """Raised by a handler for work whose caller the host answers itself (its deadline passed, or
    would before the work could finish, or it left): nothing is posted, so the host's own answer
    and count stand alone."""
_BACKOFF_MAX_S = 2.0


class ClientContext(object):
    """``context.client_context``: ``custom`` is the caller's metadata (Content-Type, Accept, ...)."""

    def __init__(self, custom: Optional[Dict[str, Any]] = None, client: Any = None,
                 env: Any = None) -> None:
        self.custom = custom if custom is not None else {}
        self.client = client
        self.env = env

    def __repr__(self) -> str:
        return "ClientContext(custom={!r})".format(self.custom)


class LambdaContext(object):
    """The ``context`` argument of a handler, with the attributes Greengrass functions use."""

    def __init__(self, function_arn: str, invocation_id: str, client_context: ClientContext,
                 deadline: Optional[float] = None,
                 cancelled: Optional[Callable[[], bool]] = None) -> None:
        name, qualifier = protocol.function_name_of(function_arn)
        # When the caller stops waiting (time.monotonic), and a check whether it already has;
        # known when the host's board is in this process, None otherwise.
        self.deadline = deadline
        self.cancelled = cancelled
        self.invoked_function_arn = function_arn
        self.function_name = name
        self.function_version = qualifier or "$LATEST"
        self.invocation_id = invocation_id
        self.aws_request_id = invocation_id  # what Lambda code (e.g. the ML Feedback connector) reads
        self.client_context = client_context
        self.identity = None

    def get_remaining_time_in_millis(self) -> Optional[int]:
        """Lambda's call: milliseconds until the caller gives up (None when not known)."""
        if self.deadline is None:
            return None
        return max(0, int((self.deadline - time.monotonic()) * 1000))

    def __repr__(self) -> str:
        return "LambdaContext(function_name={!r}, invocation_id={!r})".format(
            self.function_name, self.invocation_id)


def build_context(function_arn: str, work: WorkItem) -> LambdaContext:
    """The context of one work item; ValueError when its client context is not base64 JSON."""
    document = protocol.decode_client_context(work.client_context)
    custom = document.get("custom")
    return LambdaContext(function_arn, work.invocation_id,
                         ClientContext(custom if isinstance(custom, dict) else {},
                                       document.get("client"), document.get("env")),
                         deadline=work.deadline, cancelled=work.cancelled)


def encode_result(result: Any) -> bytes:
    """bytes as is, str as UTF-8, anything else as JSON; TypeError/ValueError if it cannot be."""
    if isinstance(result, (bytes, bytearray, memoryview)):
        return bytes(result)
    if isinstance(result, str):
        return result.encode("utf-8")
    return json.dumps(result).encode("utf-8")


def handle_work(function_arn: str, handler: Handler, client: IPCClient, work: WorkItem) -> None:
    """Run the handler on one work item and post its outcome; never raises."""
    with invocation(work.invocation_id):
        _handle_work(function_arn, handler, client, work)


def _handle_work(function_arn: str, handler: Handler, client: IPCClient, work: WorkItem) -> None:
    try:
        context = build_context(function_arn, work)
    except ValueError as exc:
        _post_error(client, function_arn, work.invocation_id, str(exc), "InvalidClientContext")
        return
    try:
        result = handler(work.payload, context)
    except NoAnswer as exc:
        log.debug("invocation %s of %s is left to the host to answer: %s", work.invocation_id,
                  function_arn, exc)
        return
    except Exception as exc:  # the handler's failure is the caller's answer, not ours
        log.info("handler of %s raised %s for invocation %s: %s", function_arn,
                 type(exc).__name__, work.invocation_id, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        _post_error(client, function_arn, work.invocation_id, str(exc) or type(exc).__name__,
                    type(exc).__name__)
        return
    try:
        payload = encode_result(result)
    except (TypeError, ValueError) as exc:
        _post_error(client, function_arn, work.invocation_id,
                    "the handler's result could not be serialised to JSON: {}".format(exc),
                    "SerializationError")
        return
    try:
        client.post_work_result(function_arn, work.invocation_id, payload)
    except IPCError as exc:
        if exc.status == 413:
            # The core refused the result for its size: tell the caller now, instead of letting
            # it wait for the function timeout.
            _post_error(client, function_arn, work.invocation_id,
                        "the handler's result of {} bytes was refused by the IPC endpoint: {}".format(
                            len(payload), exc), "PayloadTooLarge")
            return
        # Typically the invocation timed out meanwhile; the caller already has its answer.
        log.log(_post_failure_level(exc), "could not post the result of invocation %s of %s: %s",
                work.invocation_id, function_arn, exc)


def _post_error(client: IPCClient, function_arn: str, invocation_id: str, message: str,
                error_type: str) -> None:
    try:
        client.post_handler_err(function_arn, invocation_id, message, error_type)
    except IPCError as exc:
        log.log(_post_failure_level(exc), "could not post the error of invocation %s of %s: %s",
                invocation_id, function_arn, exc)


def _post_failure_level(exc: IPCError) -> int:
    # 409: the caller was answered already (its deadline passed, or it left); routine under load.
    return logging.DEBUG if exc.status == 409 else logging.WARNING


def _worker(function_arn: str, handler: Handler, client: IPCClient, stop: threading.Event) -> None:
    delay = _BACKOFF_START_S
    failures = 0
    while not stop.is_set():
        try:
            work = client.get_work(function_arn)
        except IPCError as exc:
            if stop.is_set():
                break
            failures += 1
            # The first failure is news; a core that stays away should not flood the log, and a
            # host that is shutting down (503) is no news at all.
            (log.warning if failures == 1 and exc.status != 503 else log.debug)(
                "get_work for %s failed (retrying in %.2f s): %s", function_arn, delay, exc)
            stop.wait(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)
            continue
        if failures:
            log.info("get_work for %s works again after %d failure(s)", function_arn, failures)
        delay, failures = _BACKOFF_START_S, 0
        if not work.invocation_id:
            log.warning("get_work for %s returned work without an invocation id; ignored", function_arn)
            continue
        try:
            handle_work(function_arn, handler, client, work)
        except Exception:  # a bug must cost one invocation (it times out), not the worker
            log.exception("unexpected failure handling invocation %s of %s", work.invocation_id,
                          function_arn)


def run_lambda(function_arn: str, handler: Handler, client: Optional[IPCClient] = None,
               stop_event: Optional[threading.Event] = None, concurrency: int = 1) -> None:
    """Serve `function_arn` with `handler` until `stop_event` is set (forever without one).

    :param client: the IPC client; default one configured from the Lambda environment. Give the
        loop its own client: stopping interrupts that client's get_work long polls.
    :param concurrency: number of worker threads polling in parallel (the handler must be
        thread-safe when this is above 1).

    Blocks the calling thread. IPC failures (core restarting, host not up yet) are retried with
    a backoff of up to 2 s; a handler failure only fails its own invocation.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1, not {}".format(concurrency))
    client = client if client is not None else IPCClient()
    stop = stop_event if stop_event is not None else threading.Event()
    workers: List[threading.Thread] = []
    for index in range(concurrency):
        worker = threading.Thread(target=_worker, args=(function_arn, handler, client, stop),
                                  name="lambda-{}-{}".format(protocol.function_name_of(function_arn)[0],
                                                             index), daemon=True)
        worker.start()
        workers.append(worker)
    log.info("serving %s with %d worker(s) via %r", function_arn, concurrency, client)
    try:
        while not stop.wait(0.2):
            if not any(w.is_alive() for w in workers):
                return
    finally:
        stop.set()
        # A worker may enter get_work just after one interrupt; keep interrupting until all end.
        while any(w.is_alive() for w in workers):
            client.interrupt_polls()
            for worker in workers:
                worker.join(timeout=0.1)
        log.info("stopped serving %s", function_arn)


class LambdaThread:
    """:func:`run_lambda` in a thread of its own (how a host serves a function in its process)."""

    def __init__(self, function_arn: str, handler: Handler, client: Any, concurrency: int = 1,
                 name: Optional[str] = None, daemon: bool = False) -> None:
        self.function_arn = function_arn
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=run_lambda, name=name or "lambda-{}".format(protocol.function_name_of(function_arn)[0]),
            args=(function_arn, handler, client),
            kwargs={"stop_event": self._stop, "concurrency": concurrency}, daemon=daemon)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)
