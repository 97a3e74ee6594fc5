"""The listening side: a threading HTTP server whose connections are admitted by a
:class:`~.guard.ConnectionGuard` before a thread exists, and which knows the requests in flight
(so that a graceful shutdown can wait for them).
"""
from __future__ import annotations

import collections
import logging
import socket
import socketserver
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any, Deque, Tuple, Type

from ..protocol import error_body
from .guard import BUSY_RESPONSE, BUSY_TYPE, ConnectionGuard, busy_message

log = logging.getLogger("connector.ipc.http")

# Refused connections kept open to be drained, and for how long at most.
MAX_LINGERING = 16
LINGER_S = 1.0


class Inflight:
    """Requests being handled now; :meth:`wait_idle` waits until there are none."""

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    def enter(self) -> None:
        with self._changed:
            self._count += 1

    def leave(self) -> None:
        with self._changed:
            self._count -= 1
            self._changed.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._changed:
            while self._count > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True


class HardenedServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client connection must never keep the process alive
    allow_reuse_address = True
    # socketserver's default backlog of 5 resets connections as soon as a few dozen clients
    # (each call is a new connection, as with the core's urllib client) arrive together.
    request_queue_size = 128

    def __init__(self, address: Tuple[str, int], handler: Type[Any], guard: ConnectionGuard,
                 max_body_bytes: int, idle_timeout_s: float) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.guard = guard
        self.max_body_bytes = int(max_body_bytes)
        self.idle_timeout_s = float(idle_timeout_s)
        self.inflight = Inflight()
        # Refused connections stay open (write side shut) for a moment, drained, so that the
        # client's request bytes arriving after our 503 do not make the kernel reset the
        # connection before the client has read the answer.
        self._lingering: Deque[Tuple[float, socket.socket]] = collections.deque()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the bound address with getfqdn, a reverse DNS lookup
        # that can stall for seconds on an edge device without DNS; the name is never used.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        # Admission before a thread exists: a flood of connections costs no threads beyond the cap.
        if not self.guard.admit(request):
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread could be started: refuse this one, keep serving
            self.guard.release(request)
            self.shutdown_request(request)

    def _refuse_busy(self, request: socket.socket) -> None:
        body = error_body(busy_message(self.guard.max_connections), BUSY_TYPE)
        try:
            request.setblocking(False)
            request.send(BUSY_RESPONSE % (len(body), body))
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if len(self._lingering) < MAX_LINGERING:
            self._lingering.append((time.monotonic() + LINGER_S, request))
        else:
            self.shutdown_request(request)

    def service_actions(self) -> None:
        # serve_forever calls this every poll interval (0.1 s): the deadlines' clock.
        self.guard.enforce()
        now, kept = time.monotonic(), collections.deque()
        while self._lingering:
            deadline, sock = self._lingering.popleft()
            try:
                while sock.recv(65536):  # drain what the client sent; b"": it closed
                    pass
                gone = True
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            if gone or now >= deadline:
                sock.close()
            else:
                kept.append((deadline, sock))
        self._lingering = kept

    def server_close(self) -> None:
        super().server_close()
        while self._lingering:
            self._lingering.popleft()[1].close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr for any error; a client that resets its
        # connection is routine, anything else is a bug worth a logged traceback.
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, socket.timeout)):
            log.debug("connection from %s ended: %s", client_address, error)
        else:
            log.exception("error serving %s", client_address)
