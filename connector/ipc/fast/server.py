"""The fast path's server: a thread per connection on the host's Unix socket, one frame per call.

Everything a caller's work meets is the V1 exchange's own, shared, not copied:

* **admission**: the host's :class:`~..http.guard.ConnectionGuard` admits each connection before
  a thread exists; its cap counts both transports, and a connection beyond it evicts the oldest
  one waiting (of either) or is answered busy (503) at once;
* **deadlines**: the frame's fixed header within the head deadline (the idle one on a kept-alive
  connection), everything after it within the body deadline, enforced by the guard;
* **bytes**: a payload over ``max_body_bytes`` is refused from the header (413); the token, ARN,
  client context and payload are read through :meth:`ConnectionGuard.read_body`, charged to the
  body budget as they arrive (429 when a chunk does not fit);
* **the call**: :func:`..calls.invoke` (authentication, the client context's bounds, the board
  with the principal, its bounds and admission hooks, the caller-gone check), the same statuses,
  errorTypes and messages;
* **shutdown**: requests in flight count in the host's :class:`~..http.server.Inflight`, so a
  graceful shutdown waits for them; new work meets the board's draining refusal (503).

Only invoke exists (post_work RequestResponse + get_work_result for one principal), so get_work,
results, initialization and Event invocations cannot be asked for here. A frame refused for its
form (magic, version, operation, a field's length) is answered and the connection closed; so is a
refusal that leaves bytes unread. Unlike TCP, a Unix socket closed with unread bytes does not
discard what it sent: the caller still reads the answer, so nothing is drained.
"""
from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Optional, Tuple

from .. import calls, protocol
from ..http.guard import BUSY_TYPE, ConnectionGuard, busy_message
from ..http.handler import HardenedHandler, Refusal, budget_full, check_body_size, peer_gone
from ..http.server import Inflight
from . import frames
from .socketfile import Bound, remove

log = logging.getLogger("connector.ipc.fast")

POLL_S = 0.1  # how often the accept loop looks up: shutdown, and the guard's deadlines
_CALLS = {calls.POST_WORK: frames.CALL_POST_WORK, calls.GET_WORK_RESULT: frames.CALL_GET_WORK_RESULT}


class FastServer(object):
    """Serves :func:`..calls.invoke` on a bound socket (:func:`.socketfile.bind`) for `ipc_host`."""

    def __init__(self, ipc_host: Any, bound: Bound, guard: ConnectionGuard, inflight: Inflight,
                 max_body_bytes: int, idle_timeout_s: float) -> None:
        self.ipc_host = ipc_host
        self.bound = bound
        self.guard = guard
        self.inflight = inflight
        self.max_body_bytes = int(max_body_bytes)
        self.idle_timeout_s = float(idle_timeout_s)
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._count_lock = threading.Lock()
        self.frames = 0  # frames received whole (the health document's connections.fast_frames)

    @property
    def path(self) -> str:
        return self.bound.path

    def start(self) -> "FastServer":
        self._thread = threading.Thread(target=self._accept_loop, name="ipc-fast", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, and remove the socket file if it is still ours. Open connections are
        the guard's to hang up (the host does, after its grace)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        remove(self.bound)

    # -- connections --------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self.bound.listener
        listener.settimeout(POLL_S)
        while not self._stopping.is_set():
            self.guard.enforce()
            try:
                connection, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                log.warning("fast path: accept failed: %s", exc)
                continue
            self._admit(connection)

    def _admit(self, connection: socket.socket) -> None:
        if not self.guard.admit(connection):
            _send_quietly(connection, frames.answer(
                frames.CALL_POST_WORK, 503, _reason(503),
                protocol.error_body(busy_message(self.guard.max_connections), BUSY_TYPE), BUSY_TYPE,
                closing=True))
            connection.close()
            return
        try:
            threading.Thread(target=self._serve, args=(connection,), name="ipc-fast-connection",
                             daemon=True).start()
        except RuntimeError:  # no thread could be started: refuse this one, keep serving
            self.guard.release(connection)
            connection.close()

    def _serve(self, connection: socket.socket) -> None:
        connection.settimeout(self.idle_timeout_s)
        rfile = connection.makefile("rb")
        try:
            while self._one_call(connection, rfile):
                pass
        except (OSError, ValueError) as exc:  # the caller left, a deadline hung up on it
            log.debug("fast path: connection ended: %s", exc)
        except Exception:  # a bug here must cost one connection, never the server
            log.exception("fast path: internal error")
        finally:
            self.guard.release(connection)
            rfile.close()
            connection.close()

    def _one_call(self, connection: socket.socket, rfile: Any) -> bool:
        """Read one frame and answer it; False when the connection is to end."""
        self.guard.waiting(connection)  # the header's deadline starts now
        head = rfile.read(frames.REQUEST_HEADER.size)
        if len(head) < frames.REQUEST_HEADER.size:
            return False  # the caller left (or a deadline hung up) before a whole header
        self.inflight.enter()
        self.guard.handling(connection)
        with self._count_lock:
            self.frames += 1
        try:
            return self._answer(connection, rfile, frames.parse_request_header(head))
        except OSError:
            raise  # the connection failed: nobody to answer
        except Exception:  # a bug (or a failing admission hook) costs one call, as on HTTP: 500
            log.exception("fast path: internal error handling a frame")
            _send_quietly(connection, _refusal(frames.CALL_POST_WORK, Refusal(
                500, "internal error in the IPC host", "InternalError"), closing=True))
            return False
        finally:
            self.inflight.leave()

    # -- one call -----------------------------------------------------------------------------

    def _answer(self, connection: socket.socket, rfile: Any, header: frames.RequestHeader) -> bool:
        call = frames.CALL_FRAME
        consumed = False
        try:
            _check_header(header)
            call = frames.CALL_POST_WORK
            self.guard.reading(connection)  # the rest within the body deadline
            fields = self.guard.read_body(rfile, header.fields_length)
            if fields is None:
                raise budget_full(self.guard)
            if len(fields) < header.fields_length:
                return False
            token, arn, client_context = _split(fields, header)
            principal = calls.authenticate(self.ipc_host, token or None)
            _check_arn(arn)
            check_body_size(header.payload_length, self.max_body_bytes)
            payload = self.guard.read_body(rfile, header.payload_length)
            if payload is None:
                raise budget_full(self.guard)
            if len(payload) < header.payload_length:
                return False
            consumed = True
            self.guard.handling(connection)
            invocation = calls.invoke(self.ipc_host, principal, arn, payload, client_context,
                                      lambda: peer_gone(connection))
        except Refusal as refusal:
            call = _CALLS.get(getattr(refusal, "call", None), call)
            keep = consumed and (refusal.status < 500 or refusal.status == 503)
            connection.sendall(_refusal(call, refusal, closing=not keep))
            return keep
        if invocation.function_error and peer_gone(connection):
            return False  # the caller left; nobody to answer
        connection.sendall(frames.answer(frames.CALL_GET_WORK_RESULT, 200, _reason(200),
                                         invocation.result,
                                         function_error=invocation.function_error or ""))
        return True


def _check_header(header: frames.RequestHeader) -> None:
    """Refusals of the frame's form, all from the fixed header, before any field is read."""
    if header.magic != frames.REQUEST_MAGIC:
        raise Refusal(400, "not a fast-path frame (it starts {!r}, not {!r}); this socket speaks "
                      "only the greengrass-ml fast path".format(header.magic, frames.REQUEST_MAGIC),
                      "BadFrame")
    if header.version != frames.VERSION:
        raise Refusal(505, "fast-path version {} is not supported; this host speaks version {}"
                      .format(header.version, frames.VERSION), "UnsupportedVersion")
    if header.operation != frames.OP_INVOKE:
        raise Refusal(400, "operation {} does not exist: the fast path has only invoke ({}); "
                      "get_work, results and initialization are the V1 exchange's, for a "
                      "function's own token".format(header.operation, frames.OP_INVOKE),
                      "UnknownOperation")
    for what, length, limit in (("token", header.token_length, frames.MAX_TOKEN_BYTES),
                                ("function ARN", header.arn_length, frames.MAX_ARN_BYTES)):
        if length > limit:
            raise Refusal(400, "the {} is {} bytes, over the limit of {}".format(what, length, limit),
                          "FieldTooLarge")
    if header.context_length > protocol.MAX_CLIENT_CONTEXT_BYTES:
        refusal = Refusal(400, "{} is {} characters, over the limit of {}".format(
            protocol.HEADER_CLIENT_CONTEXT, header.context_length,
            protocol.MAX_CLIENT_CONTEXT_BYTES), "InvalidClientContext")
        refusal.call = calls.POST_WORK  # the V1 exchange's post_work check, made from the header
        raise refusal


def _split(fields: bytes, header: frames.RequestHeader) -> Tuple[str, str, str]:
    """The token, ARN and client context, decoded as the V1 exchange's header values are."""
    arn_at = header.token_length
    context_at = arn_at + header.arn_length
    return (fields[:arn_at].decode("utf-8", "surrogateescape"),
            fields[arn_at:context_at].decode("utf-8", "replace"),
            fields[context_at:].decode("latin-1").strip())


def _check_arn(arn: str) -> None:
    """404 for an ARN no V1 path could name (empty, or with a slash), worded as the V1 exchange's."""
    if not arn or "/" in arn:
        raise Refusal(404, "unknown path {!r}; expected {}<function-arn>[/work|/initialized]"
                      .format(protocol.function_path(arn), protocol.FUNCTIONS_PREFIX), "UnknownPath")


def _refusal(call: int, refusal: Refusal, closing: bool) -> bytes:
    retry = next((value for name, value in refusal.headers if name == "Retry-After"), "")
    return frames.answer(call, refusal.status, _reason(refusal.status),
                         protocol.error_body(refusal.message, refusal.error_type),
                         refusal.error_type, retry_after=retry, closing=closing)


def _reason(status: int) -> str:
    """The reason phrase the V1 exchange's status line carries for `status`."""
    return HardenedHandler.responses.get(status, ("Error",))[0]


def _send_quietly(connection: socket.socket, data: bytes) -> None:
    try:
        connection.setblocking(False)
        connection.send(data)
    except OSError:
        pass
