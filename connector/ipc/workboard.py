"""The host's work board: per-function queues, invocations and their results, no HTTP.

Kept apart from the HTTP layer so the rules (who serves an ARN, when an invocation times out,
what happens at shutdown) can be read in one place.

Served-ARN rule (post_work for an ARN nobody serves fails at once instead of hanging until the
timeout): an ARN is served while

* the host's owner registered it (:meth:`WorkBoard.register`), or
* a get_work long poll for it is open, or
* a worker for it was seen (get_work, a posted result or error, ``initialized``) within the last
  ``attach_grace_s`` seconds; this covers the gap while a single-threaded worker runs its handler
  between two polls;

and its function did not report a failed initialization (``initialized`` with ``"Success":
false``; callers then get that reason) since its last successful one.

Every invocation gets a deadline: its function's timeout (``register(..., timeout_s=)``, else the
board's ``result_timeout_s``) after it was posted. A get_work_result still waiting then is answered
with an ``Unhandled`` function error carrying the function's timeout message (what the Greengrass
core reports for a function timeout); queued work past its deadline, or whose caller hung up
(:meth:`WorkBoard.wait_result` with ``cancelled``), is never handed to a worker, and a result
posted after it is refused and counted as late.

Who may do what is decided by the caller (the HTTP handler authenticates the token); the board
keeps each invocation's owner so that only the principal who posted it gets its result.

Bounds (``max_queued``, ``max_queued_bytes``): unfinished invocations, Event ones included, and
the payload bytes they hold. A post_work beyond either is refused at once with :class:`Busy`; a
payload is released as soon as its invocation finishes.

Admission (``register(..., admit=)``): a function may judge each post_work before it is queued,
from who posted it (the authenticated principal the HTTP layer passes, never anything the request
says about itself), its client context and its payload. The hook raises :class:`NotAdmitted`
with the status and the rule; the caller gets that refusal at once, nothing is queued. This is
how the host's GGRouter applies its subscription-like rules (:mod:`connector.standalone.ggrouter.forwarder`)
without the board knowing anything about MQTT.
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
import uuid
from typing import Any, Callable, Deque, Dict, Optional

from . import protocol
from .invocations import (DONE, QUEUED, RUNNING, AdmissionHook, AlreadyFinished, Busy, Draining,
                          Invocation, NoResultKept, NotDelivered, NotServed, Starting,
                          UnknownInvocation)

COUNTER_NAMES = ("timeouts", "abandoned", "late_results", "busy")


class _Function(object):
    def __init__(self, lock: threading.RLock) -> None:
        self.queue: Deque[Invocation] = collections.deque()
        self.work_arrived = threading.Condition(lock)
        self.open_polls = 0
        self.last_seen = float("-inf")
        self.registered = False
        self.initialization: Optional[Dict[str, object]] = None
        self.timeout_s: Optional[float] = None
        self.timeout_message = DEFAULT_TIMEOUT_MESSAGE
        self.admit: Optional[AdmissionHook] = None
        self.starting: Optional[str] = None  # why it cannot serve yet (its model is loading)
        # What callers experienced: the board's timeouts, callers that hung up before their answer,
        # and results a worker posted after their caller had been answered.
        self.counters: Dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)


DEFAULT_TIMEOUT_MESSAGE = "{function_arn} did not answer invocation {invocation_id} within {seconds:g} s"
DEFAULT_MAX_QUEUED = 256
DEFAULT_MAX_QUEUED_BYTES = 64 * 1024 * 1024


def _failed_initialization(fn: _Function) -> bool:
    return fn.initialization is not None and fn.initialization.get("Success") is False


class WorkBoard(object):
    """Thread-safe state shared by all request threads of one host."""

    def __init__(self, result_timeout_s: float = 30.0, attach_grace_s: float = 60.0,
                 result_ttl_s: float = 60.0, poll_slice_s: float = 0.25,
                 clock: Callable[[], float] = time.monotonic, max_queued: int = DEFAULT_MAX_QUEUED,
                 max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES) -> None:
        self.result_timeout_s = float(result_timeout_s)
        self.max_queued = int(max_queued)
        self.max_queued_bytes = int(max_queued_bytes)
        self._unfinished = 0
        self._unfinished_bytes = 0
        self.attach_grace_s = float(attach_grace_s)
        # Results nobody fetched (the caller died) are forgotten this long after their deadline.
        self.result_ttl_s = float(result_ttl_s)
        self.poll_slice_s = poll_slice_s
        self._clock = clock
        self._lock = threading.RLock()
        self._functions: Dict[str, _Function] = {}
        self._invocations: Dict[str, Invocation] = {}
        self._draining = False
        self._next_sweep = 0.0
        self._sequence = itertools.count(1)

    # -- who serves what ----------------------------------------------------------------------

    def register(self, function_arn: str, served: bool = True, timeout_s: Optional[float] = None,
                 timeout_message: Optional[str] = None, admit: Optional[AdmissionHook] = None) -> None:
        """Declare `function_arn`. served=False: it counts as served only while a worker polls it
        (see the served-ARN rule). timeout_message may use {function_arn}, {invocation_id} and
        {seconds}. admit: the function's admission hook (see the module docstring); once set it
        stays until replaced by another."""
        with self._lock:
            fn = self._function(function_arn)
            fn.registered = served
            fn.starting = None
            if admit is not None:
                fn.admit = admit
            if timeout_s is not None:
                fn.timeout_s = float(timeout_s)
            if timeout_message is not None:
                fn.timeout_message = timeout_message

    def starting(self, function_arn: str, why: str) -> None:
        """`function_arn` will be served once it has started (:meth:`register`); until then a
        post_work for it is refused with :class:`Starting` saying `why` (the caller retries),
        not with NotServed (a misspelt address)."""
        with self._lock:
            self._function(function_arn).starting = why

    def served(self) -> "list[str]":
        """The function ARNs served now (for the message to a caller who named another)."""
        with self._lock:
            return sorted(arn for arn in self._functions if self.is_served(arn))

    def counters(self, function_arn: str) -> Dict[str, int]:
        """What callers of `function_arn` experienced: timeouts, abandoned, late_results, busy."""
        with self._lock:
            fn = self._functions.get(function_arn)
            return dict(fn.counters) if fn else dict.fromkeys(COUNTER_NAMES, 0)

    def describe(self, function_arn: str) -> Dict[str, int]:
        """The health document's ``board`` section for `function_arn`: its counters and queue."""
        return dict(self.counters(function_arn), queue_depth=self.queue_depth(function_arn))

    def queue_depth(self, function_arn: str) -> int:
        """Invocations of `function_arn` waiting to be taken (get_work not yet called for them)."""
        with self._lock:
            fn = self._functions.get(function_arn)
            return len(fn.queue) if fn is not None else 0

    def timeout_of(self, function_arn: str) -> float:
        with self._lock:
            fn = self._functions.get(function_arn)
            return fn.timeout_s if fn is not None and fn.timeout_s is not None else self.result_timeout_s

    def unregister(self, function_arn: str) -> None:
        with self._lock:
            self._function(function_arn).registered = False

    def is_served(self, function_arn: str) -> bool:
        with self._lock:
            fn = self._functions.get(function_arn)
            if fn is None or _failed_initialization(fn):
                return False
            return (fn.registered or fn.open_polls > 0
                    or self._clock() - fn.last_seen <= self.attach_grace_s)

    def note_initialized(self, function_arn: str, success: bool, response: str) -> None:
        with self._lock:
            fn = self._function(function_arn)
            fn.initialization = {"Success": success, "Response": response}
            fn.last_seen = self._clock()

    def initialization(self, function_arn: str) -> Optional[Dict[str, object]]:
        """What the function reported through ``initialized``, or None if it has not."""
        with self._lock:
            fn = self._functions.get(function_arn)
            return dict(fn.initialization) if fn and fn.initialization else None

    # -- the caller's side --------------------------------------------------------------------

    def submit(self, function_arn: str, payload: bytes, client_context: str,
               invocation_type: str, owner: str = "", principal: Any = None) -> Invocation:
        """Queue work for `function_arn`; raises Draining, NotServed, NotAdmitted (the function's
        admission hook, given `principal`: who posted, as authenticated) or Busy instead."""
        with self._lock:
            self._check_accepting(function_arn)
            admit = self._function(function_arn).admit
        if admit is not None:
            admit(principal, client_context, payload)  # outside the lock: it may parse the context
        with self._lock:
            if admit is not None:
                self._check_accepting(function_arn)  # the host may have begun draining meanwhile
            fn = self._function(function_arn)
            if (self._unfinished >= self.max_queued
                    or self._unfinished_bytes + len(payload) > self.max_queued_bytes):
                fn.counters["busy"] += 1
                raise Busy("the host is busy: {} invocation(s) holding {} bytes are waiting (limits: "
                           "{} invocations, {} bytes); retry later".format(
                               self._unfinished, self._unfinished_bytes, self.max_queued,
                               self.max_queued_bytes))
            now = self._clock()
            invocation = Invocation(self._new_id(), function_arn, payload, client_context,
                                    invocation_type, now + self.timeout_of(function_arn), owner)
            self._invocations[invocation.invocation_id] = invocation
            self._unfinished += 1
            self._unfinished_bytes += len(payload)
            fn.queue.append(invocation)
            # One invocation needs one poller: waking them all costs the poster a wake-up (an
            # inter-processor interrupt on an idle core) per poller, 20-50 us on a 2-core VM with
            # serve's three pollers, for threads that find nothing. A woken poller always takes
            # what is queued before it looks at anything else (take), and the others look again
            # within their poll slice.
            fn.work_arrived.notify()
            return invocation

    def _check_accepting(self, function_arn: str) -> None:
        """Raise Draining or NotServed unless post_work for `function_arn` can be taken now."""
        if self._draining:
            raise Draining("the IPC host is shutting down and accepts no new work")
        self._sweep()
        fn = self._functions.get(function_arn)
        if fn is not None and fn.starting is not None:
            raise Starting("{} is starting: {}; retry in a moment".format(function_arn, fn.starting))
        if not self.is_served(function_arn):
            if fn is not None and _failed_initialization(fn):
                raise NotServed("{} reported that it failed to initialize: {}".format(
                    function_arn, fn.initialization.get("Response") or "(no reason given)"))
            served = self.served()
            raise NotServed("no function serves {} on this host; it serves {}".format(
                function_arn, ", ".join(served) if served else "none yet"))

    def wait_result(self, function_arn: str, invocation_id: str, owner: str = "",
                    cancelled: Callable[[], bool] = lambda: False) -> Invocation:
        """Block until the invocation is finished or its deadline passes; then hand it over once.

        Only its owner (the principal that posted it) may wait: for anybody else it does not
        exist. When `cancelled()` turns true (the caller hung up) the invocation is abandoned:
        it is never handed to a worker, and None of it is kept."""
        with self._lock:
            invocation = self._invocations.get(invocation_id)
            if (invocation is None or invocation.function_arn != function_arn
                    or invocation.owner != owner or invocation.handed_over):
                raise UnknownInvocation(
                    "no invocation {} for {} (unknown, already answered or expired)".format(
                        invocation_id, function_arn))
            if invocation.is_event:
                raise NoResultKept(
                    "invocation {} is an Event invocation; no result is kept".format(invocation_id))
        while True:
            remaining = invocation.deadline - self._clock()
            if invocation.done.wait(max(0.0, min(remaining, self.poll_slice_s))):
                break
            if remaining <= self.poll_slice_s:
                with self._lock:
                    self._expire(invocation)
                break
            if cancelled():
                with self._lock:
                    if not invocation.done.is_set():
                        self._function(function_arn).counters["abandoned"] += 1
                        self._finish(invocation, protocol.error_body(
                            "the caller hung up before the answer", "Abandoned"),
                            protocol.FUNCTION_ERROR_UNHANDLED)
                break
        with self._lock:
            invocation.handed_over = True
            if not invocation.taken or invocation.answered:
                # Kept otherwise, so that the worker's late answer is recognised (and counted) as
                # late; the sweep forgets it after result_ttl_s.
                self._invocations.pop(invocation_id, None)
        return invocation

    # -- the worker's side --------------------------------------------------------------------

    def take(self, function_arn: str, cancelled: Callable[[], bool] = lambda: False
             ) -> Optional[Invocation]:
        """Long poll: the next queued invocation, or None when draining with nothing queued or
        when `cancelled()` says the poller went away."""
        with self._lock:
            fn = self._function(function_arn)
            fn.open_polls += 1
            fn.last_seen = self._clock()
            try:
                while True:
                    while fn.queue:
                        invocation = fn.queue.popleft()
                        if invocation.done.is_set():
                            continue
                        if self._clock() >= invocation.deadline:
                            self._expire(invocation)
                            continue
                        invocation.state = RUNNING
                        invocation.taken = True
                        return invocation
                    if self._draining or cancelled():
                        return None
                    fn.work_arrived.wait(self.poll_slice_s)
            finally:
                fn.open_polls -= 1
                fn.last_seen = self._clock()

    def requeue(self, invocation: Invocation) -> None:
        """Put back work whose delivery failed (the poller vanished), at the head of the queue."""
        with self._lock:
            if invocation.state != RUNNING or invocation.done.is_set():
                return
            invocation.state = QUEUED
            fn = self._function(invocation.function_arn)
            fn.queue.appendleft(invocation)
            fn.work_arrived.notify_all()

    def complete(self, function_arn: str, invocation_id: str, payload: bytes,
                 function_error: Optional[str] = None) -> None:
        """Record the result (or the function error) of an invocation a worker took."""
        with self._lock:
            fn = self._function(function_arn)
            fn.last_seen = self._clock()
            invocation = self._invocations.get(invocation_id)
            if invocation is None or invocation.function_arn != function_arn:
                raise UnknownInvocation("no invocation {} for {}".format(invocation_id, function_arn))
            if invocation.done.is_set():
                if invocation.taken and not invocation.answered:
                    invocation.answered = True  # count a late result once
                    fn.counters["late_results"] += 1
                raise AlreadyFinished(
                    "invocation {} is already finished (answered or timed out)".format(invocation_id))
            if invocation.state == QUEUED:
                raise NotDelivered("invocation {} was not taken by get_work yet".format(invocation_id))
            invocation.answered = True
            self._finish(invocation, payload, function_error)
            if invocation.is_event:
                self._invocations.pop(invocation_id, None)

    # -- shutdown -----------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._draining

    def start_draining(self) -> None:
        """Refuse new work; wake every long poll so idle workers are answered at once."""
        with self._lock:
            self._draining = True
            for fn in self._functions.values():
                fn.work_arrived.notify_all()

    def fail_pending(self, message: str) -> int:
        """Finish every unfinished invocation with an Unhandled error; return how many."""
        with self._lock:
            failed = 0
            for invocation in list(self._invocations.values()):
                if not invocation.done.is_set():
                    self._finish(invocation, protocol.error_body(message, "ServiceUnavailable"),
                                 protocol.FUNCTION_ERROR_UNHANDLED)
                    failed += 1
            for fn in self._functions.values():
                fn.queue.clear()
            return failed

    def pending_count(self) -> int:
        with self._lock:
            return sum(1 for i in self._invocations.values() if not i.done.is_set())

    # -- internals (call with the lock held) ---------------------------------------------------

    def _function(self, function_arn: str) -> _Function:
        fn = self._functions.get(function_arn)
        if fn is None:
            fn = self._functions[function_arn] = _Function(self._lock)
        return fn

    def _new_id(self) -> str:
        # uuid4 like the core's ids; the sequence number only helps reading logs.
        return "{}-{}".format(uuid.uuid4(), next(self._sequence))

    def _finish(self, invocation: Invocation, payload: bytes, function_error: Optional[str]) -> None:
        if not invocation.done.is_set():
            self._unfinished -= 1
            self._unfinished_bytes -= len(invocation.payload)
        if invocation.state == QUEUED:
            try:
                self._function(invocation.function_arn).queue.remove(invocation)
            except ValueError:
                pass
        invocation.payload = b""  # the bytes are the worker's now, or nobody's
        invocation.result = payload
        invocation.function_error = function_error
        invocation.state = DONE
        invocation.finished_at = self._clock()
        invocation.done.set()

    def _expire(self, invocation: Invocation) -> None:
        if invocation.done.is_set():
            return
        fn = self._function(invocation.function_arn)
        if not invocation.is_event:
            fn.counters["timeouts"] += 1
        message = fn.timeout_message.format(function_arn=invocation.function_arn,
                                            invocation_id=invocation.invocation_id,
                                            seconds=self.timeout_of(invocation.function_arn))
        self._finish(invocation, protocol.error_body(message, "TimeoutError"),
                     protocol.FUNCTION_ERROR_UNHANDLED)

    def _sweep(self) -> None:
        """Expire overdue work and forget results nobody came for; at most once a second."""
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for invocation in list(self._invocations.values()):
            if not invocation.done.is_set() and now >= invocation.deadline:
                self._expire(invocation)
            if invocation.done.is_set() and (
                    invocation.is_event or now >= invocation.deadline + self.result_ttl_s):
                self._invocations.pop(invocation.invocation_id, None)
