"""What the work board holds and refuses: invocations, their states, and the board's refusals.

The refusals are what :mod:`connector.ipc.routes` turns into HTTP statuses; they never reach a
caller as exceptions.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from . import protocol

QUEUED = "queued"
RUNNING = "running"
DONE = "done"


class WorkBoardError(Exception):
    """Base of the refusals the HTTP layer turns into 4xx/5xx answers."""


class NotServed(WorkBoardError):
    """No worker serves this function ARN (see the served-ARN rule)."""


class Starting(WorkBoardError):
    """The function will be served once it has started (its model is loading); retry soon."""


class Draining(WorkBoardError):
    """The host is shutting down and takes no new work."""


class UnknownInvocation(WorkBoardError):
    """No invocation with this id exists for this function (never did, or was already answered)."""


class NoResultKept(WorkBoardError):
    """The invocation is an Event invocation: its result is never kept."""


class AlreadyFinished(WorkBoardError):
    """A result was posted for an invocation that is already finished (answered or timed out)."""


class NotDelivered(WorkBoardError):
    """A result was posted for an invocation no worker has taken yet."""


class Busy(WorkBoardError):
    """Too many invocations (or payload bytes) are queued; the caller should retry later."""


class NotAdmitted(WorkBoardError):
    """The function's admission hook refused this post_work; `status` (4xx) and `error_type`
    travel to the caller with the message, which names the rule."""

    def __init__(self, message: str, status: int = 403, error_type: str = "Forbidden") -> None:
        super().__init__(message)
        self.status = int(status)
        self.error_type = error_type


# admit(principal, client_context, payload): returns to admit, raises NotAdmitted to refuse.
AdmissionHook = Callable[[Any, str, bytes], None]


class Invocation(object):
    """One piece of posted work and, once finished, its result."""

    def __init__(self, invocation_id: str, function_arn: str, payload: bytes, client_context: str,
                 invocation_type: str, deadline: float, owner: str = "") -> None:
        self.invocation_id = invocation_id
        self.owner = owner
        self.function_arn = function_arn
        self.payload = payload
        self.client_context = client_context
        self.invocation_type = invocation_type
        self.deadline = deadline
        self.state = QUEUED
        self.result = b""
        self.function_error: Optional[str] = None
        self.finished_at = 0.0
        self.done = threading.Event()
        self.taken = False  # handed to a worker at least once
        self.answered = False  # a worker posted its result or error
        self.handed_over = False  # its caller got the outcome

    def cancelled(self) -> bool:
        """True once nobody waits for this invocation any more (answered, timed out, abandoned)."""
        return self.done.is_set()

    @property
    def is_event(self) -> bool:
        return self.invocation_type == protocol.INVOCATION_EVENT
