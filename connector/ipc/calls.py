"""The caller's calls without their transport: who a token is, the client context's bounds, the
board's refusals as statuses, post_work, get_work_result, and invoke (the two for one principal).

Both transports call these and nothing else for a caller's work: the V1 exchange's routes
(:mod:`.routes`, POST then GET over HTTP) and the fast path (:mod:`.fast.server`, one frame each
way on a Unix socket). So a rule of SPEC section 4's "Who may do what", a bound, a status, an
errorType or a message cannot differ between them: there is one copy. Every refusal is a
:class:`~.http.handler.Refusal`; each transport writes it in its own framing.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from . import invocations, protocol
from .auth import Principal
from .http.handler import Refusal
from .invocations import Invocation

# A function that is starting (its model loading) will serve in a moment: its callers are told to
# retry after this many seconds (the SDK does, within its timeout).
RETRY_AFTER_S = 1

BOARD_REFUSALS = {
    invocations.NotServed: (404, "ResourceNotFoundException"),
    invocations.UnknownInvocation: (404, "InvocationNotFound"),
    invocations.NoResultKept: (400, "NoResultKept"),
    invocations.AlreadyFinished: (409, "InvocationAlreadyFinished"),
    invocations.NotDelivered: (409, "InvocationNotDelivered"),
    invocations.Draining: (503, "ServiceUnavailable"),
    invocations.Starting: (503, "ServiceStarting"),
    invocations.Busy: (429, "TooManyRequestsException"),
}

Cancelled = Callable[[], bool]


def authenticate(ipc_host: Any, given: Optional[str]) -> Principal:
    """The principal of token `given` (None: none was sent) on `ipc_host` (an
    :class:`~.host.IPCHost`): 401 without a token, 403 for one the host did not issue."""
    if given is None:
        raise Refusal(401, "missing Authorization header (the raw IPC token)", "Unauthorized")
    principal = ipc_host.principal(given)
    if principal is None:
        raise Refusal(403, "wrong Authorization token", "Forbidden")
    return principal


def check_client_context(client_context: str) -> None:
    """400 InvalidClientContext unless `client_context` is within the bounds and base64 of a JSON
    object (size, base64, depth, JSON: a bad one is the caller's 400, never the function's)."""
    try:
        protocol.decode_client_context(client_context)
    except ValueError as exc:
        raise Refusal(400, str(exc), "InvalidClientContext")


def board_call(board: Any, call: Callable[[Any], Any]) -> Any:
    """``call(board)``, its refusals turned into the documented statuses and errorTypes."""
    try:
        return call(board)
    except invocations.NotAdmitted as exc:
        raise Refusal(exc.status, str(exc), exc.error_type)
    except invocations.WorkBoardError as exc:
        status, error_type = BOARD_REFUSALS[type(exc)]
        retry = [("Retry-After", str(RETRY_AFTER_S))] if isinstance(exc, invocations.Starting) else []
        raise Refusal(status, str(exc), error_type, retry)


def post_work(ipc_host: Any, principal: Principal, function_arn: str, payload: bytes,
              client_context: str, invocation_type: str = protocol.INVOCATION_REQUEST_RESPONSE
              ) -> Invocation:
    """Queue `payload` for `function_arn` as `principal` (its admission hook sees who, as
    authenticated, never what the request says about itself); the board's bounds apply."""
    check_client_context(client_context)
    if invocation_type not in protocol.INVOCATION_TYPES:
        raise Refusal(400, "{} must be one of {}, not {!r}".format(
            protocol.HEADER_INVOCATION_TYPE, ", ".join(protocol.INVOCATION_TYPES),
            invocation_type), "InvalidInvocationType")
    return board_call(ipc_host.board, lambda b: b.submit(
        function_arn, payload, client_context, invocation_type, principal.name, principal=principal))


def get_work_result(ipc_host: Any, principal: Principal, function_arn: str, invocation_id: str,
                    cancelled: Cancelled) -> Invocation:
    """Wait for the result of `invocation_id`, which only the principal that posted it may have
    (for anybody else it does not exist: 404). `cancelled()` says the caller hung up."""
    return board_call(ipc_host.board, lambda b: b.wait_result(
        function_arn, invocation_id, principal.name, cancelled=cancelled))


# Which of the two calls of invoke refused (a Refusal's ``call``): the SDK words a refusal of
# the post as the V1 exchange's POST and one of the result as its GET.
POST_WORK = "post_work"
GET_WORK_RESULT = "get_work_result"


def invoke(ipc_host: Any, principal: Principal, function_arn: str, payload: bytes,
           client_context: str, cancelled: Cancelled) -> Invocation:
    """post_work RequestResponse, then get_work_result of that invocation for the same principal:
    the only operation of the fast path. A refusal says in ``call`` which of the two refused."""
    try:
        invocation = post_work(ipc_host, principal, function_arn, payload, client_context)
    except Refusal as refusal:
        refusal.call = POST_WORK
        raise
    try:
        return get_work_result(ipc_host, principal, function_arn, invocation.invocation_id,
                               cancelled)
    except Refusal as refusal:
        refusal.call = GET_WORK_RESULT
        raise
