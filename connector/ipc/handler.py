"""HTTP request handling of the standalone IPC host: parse, authenticate, route, answer.

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
                                            large, 429 its queue full; see mqtt_router.py)
connections full of busy clients            503 (answered before a thread is started)
unknown path / method on a known path       404 / 405 (+ Allow)
bad header, bad client context, bad JSON    400
Content-Length missing / body too large     411 / 413
request line too long / HTTP/2+ version     414 / 505
ARN nobody serves, unknown invocation id    404
result for a finished / undelivered item    409
host shutting down                          503
head / body not complete in time            connection closed (see connections.py)
function timed out (get_work_result)        200 + X-Amz-Function-Error: Unhandled
==========================================  =====================================================

Every refusal has a JSON body ``{"errorMessage": ..., "errorType": ...}``; no request can crash
the server.
"""
from __future__ import annotations

import json
import logging
import select
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Iterable, Optional, Tuple

from . import protocol
from . import workboard

if TYPE_CHECKING:  # pragma: no cover
    from .host import Principal

log = logging.getLogger(__name__)

_ROUTES = {
    (protocol.ENDPOINT_BASE, "POST"): "_post_work",
    (protocol.ENDPOINT_BASE, "GET"): "_get_work_result",
    (protocol.ENDPOINT_WORK, "GET"): "_get_work",
    (protocol.ENDPOINT_WORK, "POST"): "_post_work_result",
    (protocol.ENDPOINT_INITIALIZED, "PUT"): "_initialized",
}


# RFC 9112 section 2.2: empty lines before a request line are ignored (at most this many).
_MAX_LEADING_EMPTY_LINES = 8
# What is read and dropped of a refused request's body before its connection closes (see
# IPCRequestHandler._discard_body).
_DISCARD_MAX_BYTES = 64 * 1024 * 1024
_DISCARD_MAX_S = 2.0
_DISCARD_IDLE_S = 0.25
# Linux: poll() reports the peer's shutdown even while unread data is pending.
_POLLRDHUP = getattr(select, "POLLRDHUP", 0)


# Unauthenticated probes (see connector.ipc.host).
_PROBES = {protocol.HEALTH_PATH: "health", "/livez": "live", "/readyz": "ready"}
# Endpoints only the function's own token may use, and what they do (for the refusal).
_FUNCTION_ONLY = {"_get_work": "take its work", "_post_work_result": "answer its work",
                  "_initialized": "report its initialization"}


def _bearer_stripped(given: Optional[str]) -> Optional[str]:
    """The token of an Authorization value, raw or "Bearer <token>" (what Prometheus' scrape
    `authorization` sends; the IPC protocol itself uses the raw token)."""
    if given is not None and given.startswith("Bearer "):
        return given[len("Bearer "):]
    return given


class Refusal(Exception):
    """An answer other than success, raised anywhere below the dispatcher."""

    def __init__(self, status: int, message: str, error_type: str,
                 headers: Iterable[Tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.headers = list(headers)


_BOARD_REFUSALS = {
    workboard.NotServed: (404, "ResourceNotFoundException"),
    workboard.UnknownInvocation: (404, "InvocationNotFound"),
    workboard.NoResultKept: (400, "NoResultKept"),
    workboard.AlreadyFinished: (409, "InvocationAlreadyFinished"),
    workboard.NotDelivered: (409, "InvocationNotDelivered"),
    workboard.Draining: (503, "ServiceUnavailable"),
    workboard.Busy: (429, "TooManyRequestsException"),
}


class IPCRequestHandler(BaseHTTPRequestHandler):
    """One connection of the host; ``self.server.ipc_host`` is the owning IPCHost."""

    protocol_version = "HTTP/1.1"  # keep-alive, so a client may reuse its connection
    # Headers and body go out in separate writes; with Nagle's algorithm the second one waits for
    # the client's delayed ACK, which costs a reused (keep-alive) connection ~40 ms a request.
    disable_nagle_algorithm = True
    server_version = "GreengrassMLIPC/1.0"

    def setup(self) -> None:
        self.timeout = self.server.ipc_host.idle_timeout_s
        super().setup()
        self._body_consumed = True
        self._principal: Optional[Principal] = None

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.guard.release(self.connection)

    def handle_one_request(self) -> None:
        self.server.guard.waiting(self.connection)  # the head's deadline starts now
        super().handle_one_request()

    def __getattr__(self, name: str):
        # Every method, standard or invented, goes through one dispatcher, so an unknown method
        # is a JSON 405 like any other wrong method, not http.server's HTML 501.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: Optional[str] = None,
                   explain: Optional[str] = None) -> None:
        """http.server's own refusals (bad request line, oversized headers) as JSON too."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            # An unparseable request line leaves http.server assuming HTTP/0.9, which would
            # suppress the status line and headers; nobody speaks 0.9 to this host.
            self.request_version = self.protocol_version
        phrase = self.responses.get(code, ("Error",))[0]
        text = message or explain or phrase
        try:
            self._send(code, protocol.error_body(text, "".join(phrase.split())),
                       content_type="application/json")
        except OSError:
            pass

    def parse_request(self) -> bool:
        # http.server closes the connection without any answer when the request line is empty;
        # RFC 9112 section 2.2 says to skip empty lines before it (clients send a stray CRLF
        # after a body), and a line of blanks is a bad request that deserves an answer.
        for _ in range(_MAX_LEADING_EMPTY_LINES):
            if self.raw_requestline not in (b"\r\n", b"\n"):
                break
            self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline:
            self.close_connection = True  # the client left after a few empty lines
            return False
        # Blank as http.server splits it (latin-1 text: \x1c-\x1f, \x85 and \xa0 are blanks too).
        too_long = len(self.raw_requestline) > 65536
        if too_long or not str(self.raw_requestline, "iso-8859-1").split():
            self.requestline, self.command = "", None
            self.send_error(414 if too_long else 400, None if too_long else "empty request line")
            return False
        return super().parse_request()

    # -- dispatch -----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        host = self.server.ipc_host
        host._request_started()
        self.server.guard.handling(self.connection)
        try:
            self._body_consumed = not self._may_have_body()
            if self.request_version == "HTTP/0.9":
                # http.server would answer a version-less request line without status or headers.
                self.request_version = self.protocol_version
                self.close_connection = True
                raise Refusal(400, "the request line needs an HTTP version (HTTP/1.1)", "BadRequest")
            self._route()
        except Refusal as refusal:
            self._refuse(refusal)
        except (ConnectionError, socket.timeout) as exc:
            log.debug("client connection lost during %s %s: %s", self.command, self.path, exc)
            self.close_connection = True
        except Exception:  # a bug here must cost one request, never the server
            log.exception("internal error handling %s %s", self.command, self.path)
            self._refuse(Refusal(500, "internal error in the IPC host", "InternalError"))
        finally:
            host._request_finished()

    def _route(self) -> None:
        path = self.path.split("?", 1)[0]
        probe = _PROBES.get(path)
        if (probe is not None or path == protocol.METRICS_PATH) \
                and self.command not in ("GET", "HEAD"):
            raise Refusal(405, "{} supports GET".format(path), "MethodNotAllowed", [("Allow", "GET")])
        if probe is not None:
            return self._probe(probe)
        if path == protocol.METRICS_PATH:
            self._authenticate(bearer=True)  # any valid token: the rule of the detailed health document
            status, text = self.server.ipc_host.metrics()
            return self._send(status, text.encode("utf-8"), content_type="text/plain; version=0.0.4; charset=utf-8")
        principal = self._authenticate()
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
        self._principal = principal
        body = self._read_body()
        self.server.guard.handling(self.connection)
        getattr(self, route)(function_arn, body)

    def _authenticate(self, bearer: bool = False) -> Principal:
        """The principal of the request's token; with `bearer` also "Bearer <token>" (what
        Prometheus' scrape `authorization` sends; the IPC protocol itself uses the raw token)."""
        given = self.headers.get(protocol.HEADER_AUTH_TOKEN)
        if bearer:
            given = _bearer_stripped(given)
        if given is None:
            raise Refusal(401, "missing Authorization header (the raw IPC token)", "Unauthorized")
        principal = self.server.ipc_host.principal(given)
        if principal is None:
            raise Refusal(403, "wrong Authorization token", "Forbidden")
        return principal

    # -- the protocol's calls -----------------------------------------------------------------

    def _post_work(self, function_arn: str, body: bytes) -> None:
        client_context = self.headers.get(protocol.HEADER_CLIENT_CONTEXT, "").strip()
        try:  # size, base64, depth and JSON: a bad one is the caller's 400, never the function's
            protocol.decode_client_context(client_context)
        except ValueError as exc:
            raise Refusal(400, str(exc), "InvalidClientContext")
        invocation_type = self.headers.get(protocol.HEADER_INVOCATION_TYPE, "").strip() \
            or protocol.INVOCATION_REQUEST_RESPONSE
        if invocation_type not in protocol.INVOCATION_TYPES:
            raise Refusal(400, "{} must be one of {}, not {!r}".format(
                protocol.HEADER_INVOCATION_TYPE, ", ".join(protocol.INVOCATION_TYPES),
                invocation_type), "InvalidInvocationType")
        invocation = self._board(lambda b: b.submit(function_arn, body, client_context,
                                                    invocation_type, self._principal.name,
                                                    principal=self._principal))
        self._send(202, headers=[(protocol.HEADER_INVOCATION_ID, invocation.invocation_id)])

    def _get_work(self, function_arn: str, body: bytes) -> None:
        board = self.server.ipc_host.board
        invocation = board.take(function_arn, cancelled=self._client_gone)
        if invocation is None:
            if board.draining:
                raise Refusal(503, "the IPC host is shutting down", "ServiceUnavailable")
            self.close_connection = True  # the poller hung up; nobody to answer
            return
        try:
            self._send(200, invocation.payload, headers=[
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
        self._send(200)

    def _get_work_result(self, function_arn: str, body: bytes) -> None:
        invocation_id = self._required_invocation_id()
        invocation = self._board(lambda b: b.wait_result(
            function_arn, invocation_id, self._principal.name, cancelled=self._client_gone))
        if invocation.function_error and self._client_gone():
            self.close_connection = True  # the caller left; nobody to answer
            return
        headers = []
        if invocation.function_error:
            headers.append((protocol.HEADER_FUNCTION_ERROR, invocation.function_error))
        self._send(200, invocation.result, headers=headers,
                   content_type="application/json" if invocation.function_error
                   else "application/octet-stream")

    def _initialized(self, function_arn: str, body: bytes) -> None:
        try:
            document = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            document = None
        if not isinstance(document, dict) or not isinstance(document.get("Success"), bool):
            raise Refusal(400, 'initialized needs a JSON body {"Success": true|false, "Response": "..."}',
                          "InvalidInitialization")
        response = document.get("Response", "")
        if not isinstance(response, str):
            response = json.dumps(response)
        self.server.ipc_host.board.note_initialized(function_arn, document["Success"], response)
        self._send(200)

    def _probe(self, which: str) -> None:
        host = self.server.ipc_host
        if which == "health":
            # Details (errors, paths) only for a valid token, raw or "Bearer" as /metrics takes
            # it (a monitoring system sends the same header to both); without one, the status only.
            given = _bearer_stripped(self.headers.get(protocol.HEADER_AUTH_TOKEN))
            status, document = host.health(given is not None and host.principal(given) is not None)
        else:
            status, document = host.liveness() if which == "live" else host.readiness()
        self._send(status, json.dumps(document).encode("utf-8"), content_type="application/json")

    # -- helpers ------------------------------------------------------------------------------

    def _board(self, call):
        try:
            return call(self.server.ipc_host.board)
        except workboard.NotAdmitted as exc:
            raise Refusal(exc.status, str(exc), exc.error_type)
        except workboard.WorkBoardError as exc:
            status, error_type = _BOARD_REFUSALS[type(exc)]
            raise Refusal(status, str(exc), error_type)

    def _required_invocation_id(self) -> str:
        invocation_id = (self.headers.get(protocol.HEADER_INVOCATION_ID) or "").strip()
        if not invocation_id:
            raise Refusal(400, "missing {} header".format(protocol.HEADER_INVOCATION_ID),
                          "MissingInvocationId")
        return invocation_id

    def _may_have_body(self) -> bool:
        length = self.headers.get("Content-Length", "0").strip()
        return bool(self.headers.get("Transfer-Encoding")) or length not in ("", "0")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise Refusal(411, "chunked bodies are not supported; send Content-Length",
                          "LengthRequired")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            if self.command in ("POST", "PUT"):
                raise Refusal(411, "Content-Length is required", "LengthRequired")
            return b""
        text = lengths[0].strip()
        # isascii: str.isdigit also accepts "²", which int() then refuses.
        if len(set(v.strip() for v in lengths)) != 1 or not (text.isascii() and text.isdigit()):
            raise Refusal(400, "Content-Length must be one non-negative integer, not {!r}".format(
                ", ".join(lengths)), "InvalidContentLength")
        length = int(text)
        limit = self.server.ipc_host.max_body_bytes
        if length > limit:
            raise Refusal(413, "body of {} bytes is over the limit of {} bytes".format(length, limit),
                          "PayloadTooLarge")
        guard = self.server.guard
        guard.reading(self.connection)  # the body's deadline starts now
        body = guard.read_body(self.rfile, length)
        if body is None:
            raise Refusal(429, "the IPC host is busy receiving other bodies ({} bytes at most at "
                          "once, {} for bodies over {} bytes); retry later".format(
                              guard.max_reading_bytes, guard.large_reading_bytes,
                              guard.small_body_bytes), "TooManyRequestsException")
        if len(body) != length:
            raise Refusal(400, "body ended after {} of {} bytes".format(len(body), length),
                          "IncompleteBody")
        self._body_consumed = True
        return body

    def _client_gone(self) -> bool:
        """True once the long-polling client closed its end (so its work is not lost on it)."""
        try:
            if _POLLRDHUP:
                # Sees the client's FIN even behind bytes it sent after its request, which the
                # peek below would return instead, taking the client for present forever.
                poller = select.poll()
                poller.register(self.connection, _POLLRDHUP)
                return bool(poller.poll(0))
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _refuse(self, refusal: Refusal) -> None:
        if not self._body_consumed:
            # The unread body would be parsed as the next request; end the connection instead.
            self.close_connection = True
        if refusal.status >= 500 and refusal.status != 503:
            self.close_connection = True
        try:
            self._send(refusal.status, protocol.error_body(refusal.message, refusal.error_type),
                       headers=refusal.headers, content_type="application/json")
        except OSError:
            self.close_connection = True
            return
        if not self._body_consumed:
            self._discard_body()

    def _discard_body(self) -> None:
        """Read and drop what the client still sends of a refused request's body.

        Closing a socket with unread data makes the kernel reset the connection, and a client
        that sends its whole body before reading (http.client, so the SDK) then fails with a
        broken pipe instead of reading the refusal (a 413, or a 401 for a large image). Bounded
        by the declared length, _DISCARD_MAX_BYTES, _DISCARD_MAX_S and _DISCARD_IDLE_S of silence.
        """
        text = (self.headers.get("Content-Length") or "").strip()
        left = int(text) if text.isascii() and text.isdigit() else _DISCARD_MAX_BYTES
        left = min(left, _DISCARD_MAX_BYTES)
        deadline = time.monotonic() + _DISCARD_MAX_S
        try:
            while left > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.connection.settimeout(min(remaining, _DISCARD_IDLE_S))
                chunk = self.rfile.read1(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except (OSError, ValueError):
            pass

    def _send(self, status: int, body: bytes = b"", headers: Iterable[Tuple[str, str]] = (),
              content_type: Optional[str] = None) -> None:
        if not self._body_consumed:
            # An unread body would be parsed as the next request (GET /healthz with a body).
            self.close_connection = True
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        # Head and body in one write: one segment and one wake-up of the client, not two.
        buffer = self.__dict__.setdefault("_headers_buffer", [])  # http.server's, as end_headers does
        buffer.append(b"\r\n")
        if body and self.command != "HEAD":
            buffer.append(body)
        self.flush_headers()
