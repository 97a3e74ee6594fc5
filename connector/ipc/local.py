"""The Lambda side of the IPC protocol, answered by a WorkBoard in the same process.

`serve` runs the host and the connector in one process. The connector's get_work / result calls
would travel over loopback HTTP to a board in that very process: two HTTP exchanges per request
that cost more than the rest of the service together. BoardClient offers run_lambda the same calls
as IPCClient, answered by the board directly, with the same outcomes (IPCError on refusal).
Callers still reach the host over HTTP; a connector attached from another process still polls.

A BoardClient is bound to one function (``IPCHost.function_client(arn)``): it holds that
function's credential simply by being handed out by the host, and may serve no other function.
Its work items carry the invocation's deadline and whether the caller still waits, so the handler
never spends the worker on work nobody will read (see :class:`connector.ipc.runtime.LambdaContext`).
"""
from __future__ import annotations

import threading
from typing import Optional

from . import protocol
from .client import IPCError, Payload, WorkItem, _as_bytes
from .invocations import WorkBoardError
from .workboard import WorkBoard


class BoardClient:
    def __init__(self, board: WorkBoard, function_arn: Optional[str] = None) -> None:
        self.board = board
        self.function_arn = function_arn
        self._interrupt = threading.Event()

    def __repr__(self) -> str:
        return "BoardClient(in-process, {})".format(self.function_arn or "any function")

    def get_work(self, function_arn: str) -> WorkItem:
        """Block until work for `function_arn` arrives; IPCError when interrupted or draining."""
        self._check(function_arn)
        invocation = self.board.take(function_arn, cancelled=self._interrupt.is_set)
        if invocation is None:
            raise IPCError("no work: the IPC host is shutting down or the poll was interrupted", 503)
        return WorkItem(invocation_id=invocation.invocation_id, payload=invocation.payload,
                        client_context=invocation.client_context, deadline=invocation.deadline,
                        cancelled=invocation.cancelled)

    def _check(self, function_arn: str) -> None:
        if self.function_arn is not None and function_arn != self.function_arn:
            raise IPCError("this in-process client serves {}, not {}".format(
                self.function_arn, function_arn), 403)

    def post_work_result(self, function_arn: str, invocation_id: str, payload: Payload) -> None:
        self._complete(function_arn, invocation_id, _as_bytes(payload), None)

    def post_handler_err(self, function_arn: str, invocation_id: str, message: str,
                         error_type: Optional[str] = None) -> None:
        self._complete(function_arn, invocation_id, protocol.error_body(message, error_type),
                       protocol.FUNCTION_ERROR_HANDLED)

    def interrupt_polls(self) -> None:
        """End the polls in progress and all later ones: run_lambda interrupts only to stop."""
        self._interrupt.set()

    def _complete(self, function_arn: str, invocation_id: str, payload: bytes,
                  function_error: Optional[str]) -> None:
        self._check(function_arn)
        try:
            self.board.complete(function_arn, invocation_id, payload, function_error)
        except WorkBoardError as e:
            raise IPCError(str(e), 409) from None
