"""The request handling every route shares: parse, bound, refuse, answer. Subclasses implement
:meth:`HardenedHandler.route` (:mod:`connector.ipc.routes`).

* every method goes through one dispatcher (an unknown method is a JSON 405, not HTML 501);
* http.server's own refusals (bad request line, oversized headers) are JSON too, with a status
  line even where it would assume HTTP/0.9; empty lines before a request line are skipped;
* a body is read only with a Content-Length, at most the server's ``max_body_bytes``, through
  the guard's budget; a refused request's body is read and dropped (bounded) so the client can
  read the refusal instead of a reset;
* an answer's head and body leave in one write;
* a failure in a route costs one request (500), never the server.

Every refusal is a :class:`Refusal` with a JSON body ``{"errorMessage": ..., "errorType": ...}``.
"""
from __future__ import annotations

import logging
import select
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import Iterable, Optional, Tuple

from ..protocol import error_body
from .guard import ConnectionGuard

log = logging.getLogger("connector.ipc.http")

# RFC 9112 section 2.2: empty lines before a request line are ignored (at most this many).
_MAX_LEADING_EMPTY_LINES = 8
# What is read and dropped of a refused request's body before its connection closes (see
# HardenedHandler._discard_body).
_DISCARD_MAX_BYTES = 64 * 1024 * 1024
_DISCARD_MAX_S = 2.0
_DISCARD_IDLE_S = 0.25
# Linux: poll() reports the peer's shutdown even while unread data is pending.
_POLLRDHUP = getattr(select, "POLLRDHUP", 0)


class Refusal(Exception):
    """An answer other than success, raised anywhere below the dispatcher."""

    def __init__(self, status: int, message: str, error_type: str,
                 headers: Iterable[Tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.headers = list(headers)


def check_body_size(length: int, limit: int) -> None:
    """413 PayloadTooLarge for a body declared over `limit` bytes (refused before it is read)."""
    if length > limit:
        raise Refusal(413, "body of {} bytes is over the limit of {} bytes".format(length, limit),
                      "PayloadTooLarge")


def budget_full(guard: ConnectionGuard) -> Refusal:
    """The 429 of a body chunk that did not fit the guard's budget of bodies being read."""
    return Refusal(429, "the IPC host is busy receiving other bodies ({} bytes at most at once, "
                   "{} for bodies over {} bytes); retry later".format(
                       guard.max_reading_bytes, guard.large_reading_bytes, guard.small_body_bytes),
                   "TooManyRequestsException")


def peer_gone(connection: socket.socket) -> bool:
    """True once the peer of `connection` closed its end (a long-polling client that left)."""
    try:
        if _POLLRDHUP:
            # Sees the client's FIN even behind bytes it sent after its request, which the
            # peek below would return instead, taking the client for present forever.
            poller = select.poll()
            poller.register(connection, _POLLRDHUP)
            return bool(poller.poll(0))
        readable, _, _ = select.select([connection], [], [], 0)
        if not readable:
            return False
        return connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class HardenedHandler(BaseHTTPRequestHandler):
    """One connection; ``self.server`` is a :class:`~.server.HardenedServer`."""

    protocol_version = "HTTP/1.1"  # keep-alive, so a client may reuse its connection
    # Headers and body go out in separate writes; with Nagle's algorithm the second one waits for
    # the client's delayed ACK, which costs a reused (keep-alive) connection ~40 ms a request.
    disable_nagle_algorithm = True
    server_version = "GreengrassMLIPC/1.0"

    def route(self) -> None:
        """Handle the parsed request (raise Refusal for any answer but success)."""
        raise Refusal(404, "nothing is served here", "UnknownPath")

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout_s
        super().setup()
        self._body_consumed = True

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
            self.send(code, error_body(text, "".join(phrase.split())), content_type="application/json")
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
        self.server.inflight.enter()
        self.server.guard.handling(self.connection)
        try:
            self._body_consumed = not self._may_have_body()
            if self.request_version == "HTTP/0.9":
                # http.server would answer a version-less request line without status or headers.
                self.request_version = self.protocol_version
                self.close_connection = True
                raise Refusal(400, "the request line needs an HTTP version (HTTP/1.1)", "BadRequest")
            self.route()
        except Refusal as refusal:
            self._refuse(refusal)
        except (ConnectionError, socket.timeout) as exc:
            log.debug("client connection lost during %s %s: %s", self.command, self.path, exc)
            self.close_connection = True
        except Exception:  # a bug here must cost one request, never the server
            log.exception("internal error handling %s %s", self.command, self.path)
            self._refuse(Refusal(500, "internal error in the IPC host", "InternalError"))
        finally:
            self.server.inflight.leave()

    # -- the body -----------------------------------------------------------------------------

    def _may_have_body(self) -> bool:
        length = self.headers.get("Content-Length", "0").strip()
        return bool(self.headers.get("Transfer-Encoding")) or length not in ("", "0")

    def read_body(self) -> bytes:
        """The request's body, bounded by the server's limit and the guard's budget."""
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
        check_body_size(length, self.server.max_body_bytes)
        guard = self.server.guard
        guard.reading(self.connection)  # the body's deadline starts now
        body = guard.read_body(self.rfile, length)
        if body is None:
            raise budget_full(guard)
        if len(body) != length:
            raise Refusal(400, "body ended after {} of {} bytes".format(len(body), length),
                          "IncompleteBody")
        self._body_consumed = True
        guard.handling(self.connection)
        return body

    def client_gone(self) -> bool:
        """True once the long-polling client closed its end (so its work is not lost on it)."""
        return peer_gone(self.connection)

    # -- answering ----------------------------------------------------------------------------

    def _refuse(self, refusal: Refusal) -> None:
        if not self._body_consumed:
            # The unread body would be parsed as the next request; end the connection instead.
            self.close_connection = True
        if refusal.status >= 500 and refusal.status != 503:
            self.close_connection = True
        try:
            self.send(refusal.status, error_body(refusal.message, refusal.error_type),
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
        # The answer is sent: this connection now holds a slot only as a courtesy to the client,
        # and a new connection at the cap takes it first.
        self.server.guard.draining(self.connection, _DISCARD_MAX_S + 1.0)
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

    def send(self, status: int, body: bytes = b"", headers: Iterable[Tuple[str, str]] = (),
             content_type: Optional[str] = None) -> None:
        """The whole answer, head and body in one write: one segment and one wake-up of the
        client, not two."""
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
        buffer = self.__dict__.setdefault("_headers_buffer", [])  # http.server's, as end_headers does
        buffer.append(b"\r\n")
        if body and self.command != "HEAD":
            buffer.append(body)
        self.flush_headers()
