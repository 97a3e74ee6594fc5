"""The host's Greengrass routes: authenticate, check who may call what, and answer from the board.

Status codes (the Greengrass core's clients treat any non-2xx as a failed IPC call, see
``wrap_urllib_exceptions`` in ``greengrass_ipc_python_sdk/ipc_client.py``; function errors travel
in a 200 answer with ``X-Amz-Function-Error``, as greengrasssdk ``Lambda.Client.invoke`` documents):

==========================================  =====================================================
post_work accepted                          202 + X-Amz-InvocationId
get_work / get_work_result / others ok      200
missing / wrong Authorization               401 / 403
a caller's token on a function's endpoint   403 (get_work, results, initialized: only the
                                            function's own token)
another principal's invocation id           404 (as if unknown: nothing is revealed)
queue or body budget full                   429 TooManyRequestsException (retry later)
refused by the function's admission rule    the rule's 4xx and errorType (GGRouter: 400 bad
                                            topic, 403 topic not allowed, 413 message too
                                            large, 429 its queue full)
connections full of busy clients            503 (answered before a thread is started)
unknown path / method on a known path       404 / 405 (+ Allow)
bad header, bad client context, bad JSON    400
Content-Length missing / body too large     411 / 413
request line too long / HTTP/2+ version     414 / 505
ARN nobody serves, unknown invocation id    404
result for a finished / undelivered item    409
function starting (its model loading)       503 ServiceStarting + Retry-After (retry soon)
host shutting down                          503
head / body not complete in time            connection closed (see http/guard.py)
function timed out (get_work_result)        200 + X-Amz-Function-Error: Unhandled
==========================================  =====================================================

Probes need no token and then carry only their status: ``GET /livez`` (the host answers),
``GET /readyz`` (a request now would be served without waiting) and ``GET /healthz``; with any
valid token (raw, or ``Bearer <token>`` as Prometheus sends it) ``/healthz`` gives the whole
document and ``/metrics`` the Prometheus text.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Optional, Tuple

from ..errors import shorten
from . import calls, protocol
from .auth import Principal
from .http.handler import HardenedHandler, Refusal

# What the host keeps of a function's initialization Response (callers and /healthz see it).
MAX_INITIALIZATION_CHARS = 1000

_ROUTES = {
    (protocol.ENDPOINT_BASE, "POST"): "_post_work",
    (protocol.ENDPOINT_BASE, "GET"): "_get_work_result",
    (protocol.ENDPOINT_WORK, "GET"): "_get_work",
    (protocol.ENDPOINT_WORK, "POST"): "_post_work_result",
    (protocol.ENDPOINT_INITIALIZED, "PUT"): "_initialized",
}
_PROBES = {protocol.HEALTH_PATH: "health", "/livez": "live", "/readyz": "ready"}
# Endpoints only the function's own token may use, and what they do (for the refusal).
_FUNCTION_ONLY = {"_get_work": "take its work", "_post_work_result": "answer its work",
                  "_initialized": "report its initialization"}


def bearer_stripped(given: Optional[str]) -> Optional[str]:
    """The token of an Authorization value, raw or "Bearer <token>" (what Prometheus' scrape
    `authorization` sends; the IPC protocol itself uses the raw token)."""
    if given is not None and given.startswith("Bearer "):
        return given[len("Bearer "):]
    return given


class GreengrassHandler(HardenedHandler):
    """One connection of an IPC host; ``self.server.ipc_host`` is the host (what it offers:
    ``board``, ``principal(token)``, ``health(detailed)``, ``liveness()``, ``readiness()``,
    ``metrics()``)."""

    def setup(self) -> None:
        super().setup()
        self._principal: Optional[Principal] = None

    def route(self) -> None:
        path = self.path.split("?", 1)[0]
        probe = _PROBES.get(path)
        if (probe is not None or path == protocol.METRICS_PATH) and self.command not in ("GET", "HEAD"):
            raise Refusal(405, "{} supports GET".format(path), "MethodNotAllowed", [("Allow", "GET")])
        if probe is not None:
            return self._probe(probe)
        if path == protocol.METRICS_PATH:
            self._authenticate(bearer=True)  # any valid token: the rule of the detailed health document
            status, text = self.server.ipc_host.metrics()
            return self.send(status, text.encode("utf-8"), content_type="text/plain; version=0.0.4; charset=utf-8")
        principal = self._authenticate()
        function_arn, handler = self._function_route(path, principal)
        self._principal = principal
        handler(function_arn, self.read_body())

    def _function_route(self, path: str, principal: Principal) -> Tuple[str, Callable[[str, bytes], None]]:
        parsed = protocol.parse_function_path(path)
        if parsed is None:
            raise Refusal(404, "unknown path {!r}; expected {}<function-arn>[/work|/initialized]"
                          .format(path, protocol.FUNCTIONS_PREFIX), "UnknownPath")
        function_arn, endpoint = parsed
        route = _ROUTES.get((endpoint, self.command))
        if route is None:
            allowed = sorted(m for (e, m) in _ROUTES if e == endpoint)
            raise Refusal(405, "{} is not supported on {}; use {}".format(
                self.command, path, " or ".join(allowed)), "MethodNotAllowed",
                [("Allow", ", ".join(allowed))])
        if route in _FUNCTION_ONLY and not principal.serves(function_arn):
            raise Refusal(403, "only {}'s own token may {} (this token is a {}'s)".format(
                function_arn, _FUNCTION_ONLY[route], "caller" if principal.function_arn is None
                else "different function"), "Forbidden")
        return function_arn, getattr(self, route)

    def _authenticate(self, bearer: bool = False) -> Principal:
        """The principal of the request's token; with `bearer` also "Bearer <token>"."""
        given = self.headers.get(protocol.HEADER_AUTH_TOKEN)
        return calls.authenticate(self.server.ipc_host, bearer_stripped(given) if bearer else given)

    # -- the protocol's calls -----------------------------------------------------------------

    def _post_work(self, function_arn: str, body: bytes) -> None:
        invocation_type = self.headers.get(protocol.HEADER_INVOCATION_TYPE, "").strip() \
            or protocol.INVOCATION_REQUEST_RESPONSE
        invocation = calls.post_work(self.server.ipc_host, self._principal, function_arn, body,
                                     self.headers.get(protocol.HEADER_CLIENT_CONTEXT, "").strip(),
                                     invocation_type)
        self.send(202, headers=[(protocol.HEADER_INVOCATION_ID, invocation.invocation_id)])

    def _get_work(self, function_arn: str, body: bytes) -> None:
        board = self.server.ipc_host.board
        invocation = board.take(function_arn, cancelled=self.client_gone)
        if invocation is None:
            if board.draining:
                raise Refusal(503, "the IPC host is shutting down", "ServiceUnavailable")
            self.close_connection = True  # the poller hung up; nobody to answer
            return
        try:
            self.send(200, invocation.payload, headers=[
                (protocol.HEADER_INVOCATION_ID, invocation.invocation_id),
                (protocol.HEADER_CLIENT_CONTEXT, invocation.client_context),
            ], content_type="application/octet-stream")
        except OSError:
            board.requeue(invocation)
            raise

    def _post_work_result(self, function_arn: str, body: bytes) -> None:
        invocation_id = self._required_invocation_id()
        function_error = self.headers.get(protocol.HEADER_FUNCTION_ERROR)
        if function_error is not None:
            function_error = function_error.strip()
            if function_error not in protocol.FUNCTION_ERRORS:
                raise Refusal(400, "{} must be one of {}, not {!r}".format(
                    protocol.HEADER_FUNCTION_ERROR, ", ".join(protocol.FUNCTION_ERRORS),
                    function_error), "InvalidFunctionError")
        self._board(lambda b: b.complete(function_arn, invocation_id, body, function_error or None))
        self.send(200)

    def _get_work_result(self, function_arn: str, body: bytes) -> None:
        invocation_id = self._required_invocation_id()
        invocation = calls.get_work_result(self.server.ipc_host, self._principal, function_arn,
                                           invocation_id, self.client_gone)
        if invocation.function_error and self.client_gone():
            self.close_connection = True  # the caller left; nobody to answer
            return
        headers = []
        if invocation.function_error:
            headers.append((protocol.HEADER_FUNCTION_ERROR, invocation.function_error))
        self.send(200, invocation.result, headers=headers,
                  content_type="application/json" if invocation.function_error
                  else "application/octet-stream")

    def _initialized(self, function_arn: str, body: bytes) -> None:
        document = None
        # Scanned first: json.loads on [[[[... deeper than the interpreter's stack is a
        # RecursionError (a 500), not a refusal.
        if not protocol.nesting_exceeds(body, protocol.MAX_CLIENT_CONTEXT_DEPTH):
            try:
                document = json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                pass
        if not isinstance(document, dict) or not isinstance(document.get("Success"), bool):
            raise Refusal(400, 'initialized needs a JSON body {{"Success": true|false, "Response": "..."}}'
                          " nested at most {} levels".format(protocol.MAX_CLIENT_CONTEXT_DEPTH),
                          "InvalidInitialization")
        response = document.get("Response", "")
        if not isinstance(response, str):
            response = json.dumps(response)
        # Repeated to callers (NotServed) and in /healthz: its start is what they need.
        self.server.ipc_host.board.note_initialized(function_arn, document["Success"],
                                                    shorten(response, MAX_INITIALIZATION_CHARS))
        self.send(200)

    def _probe(self, which: str) -> None:
        host = self.server.ipc_host
        if which == "health":
            # Details (errors, paths) only for a valid token, raw or "Bearer" as /metrics takes
            # it (a monitoring system sends the same header to both); without one, the status only.
            given = bearer_stripped(self.headers.get(protocol.HEADER_AUTH_TOKEN))
            status, document = host.health(given is not None and host.principal(given) is not None)
        else:
            status, document = host.liveness() if which == "live" else host.readiness()
        self.send(status, json.dumps(document).encode("utf-8"), content_type="application/json")

    # -- helpers ------------------------------------------------------------------------------

    def _board(self, call: Callable[[Any], Any]) -> Any:
        return calls.board_call(self.server.ipc_host.board, call)

    def _required_invocation_id(self) -> str:
        invocation_id = (self.headers.get(protocol.HEADER_INVOCATION_ID) or "").strip()
        if not invocation_id:
            raise Refusal(400, "missing {} header".format(protocol.HEADER_INVOCATION_ID),
                          "MissingInvocationId")
        return invocation_id

