"""The standalone IPC host: the part of a Greengrass V1 core that local programs talk to.

It speaks the core's local IPC protocol (see :mod:`connector.ipc.protocol` and the status table in
:mod:`connector.ipc.handler`) on loopback, so the unchanged ``greengrass_machine_learning_sdk`` and
any Lambda-style worker (:func:`connector.ipc.runtime.run_lambda`) work without Greengrass::

    host = IPCHost(port=0, result_timeout_s=10).start()
    host.register_function(service_arn)          # post_work for it is accepted from now on
    threading.Thread(target=run_lambda, args=(service_arn, handler, host.client()),
                     kwargs={"stop_event": stop}).start()
    host.set_ready()                             # GET /healthz answers 200 from now on
    ...
    host.shutdown(grace_s=5)

Which ARNs count as served is documented in :mod:`connector.ipc.workboard`. The client file that
lets the SDK find the host is documented in :mod:`connector.ipc.clientfile`. ``GET /healthz`` is
the one path that needs no token, so that process supervisors can probe it without reading the
0600 client file.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import socketserver
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Set, Tuple

from . import clientfile
from . import protocol
from .handler import IPCRequestHandler
from .workboard import WorkBoard

if TYPE_CHECKING:  # pragma: no cover
    from .client import IPCClient

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024

HealthCallback = Callable[[], Dict[str, Any]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client connection must never keep the process alive
    allow_reuse_address = True
    # socketserver's default backlog of 5 resets connections as soon as a few dozen clients
    # (each call is a new connection, as with the core's urllib client) arrive together.
    request_queue_size = 128

    def __init__(self, address: Tuple[str, int], ipc_host: "IPCHost") -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.ipc_host = ipc_host
        self._connections: Set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, IPCRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the bound address with getfqdn, a reverse DNS lookup
        # that can stall for seconds on an edge device without DNS; the name is never used.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr for any error; a client that resets its
        # connection is routine, anything else is a bug worth a logged traceback.
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, socket.timeout)):
            log.debug("connection from %s ended: %s", client_address, error)
        else:
            log.exception("error serving %s", client_address)

    def track_connection(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack_connection(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Unblock threads parked on idle keep-alive connections so they end now."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class IPCHost(object):
    """A Greengrass-compatible local IPC endpoint that any process on this machine can use."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: Optional[str] = None,
                 region: Optional[str] = None, client_file: Optional[str] = None,
                 write_client_file: bool = True, result_timeout_s: float = 30.0,
                 attach_grace_s: float = 60.0, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 idle_timeout_s: float = 120.0, health: Optional[HealthCallback] = None) -> None:
        """
        :param host: address to bind; loopback unless you mean it (the token is the only guard).
        :param port: TCP port; 0 picks a free one (read it back from :attr:`port`).
        :param token: the Authorization token; default ``$AWS_CONTAINER_AUTHORIZATION_TOKEN`` or
            a fresh random one.
        :param region: written to the client file so the SDK builds the same ARNs as the owner;
            default ``$AWS_REGION`` or us-east-1.
        :param client_file: where to write the client file; default
            :func:`connector.ipc.clientfile.default_path`.
        :param write_client_file: False for hosts that clients find by other means (tests).
        :param result_timeout_s: how long after post_work an invocation may take before the
            caller gets an ``Unhandled`` timeout error.
        :param attach_grace_s: see the served-ARN rule in :mod:`connector.ipc.workboard`.
        :param max_body_bytes: larger request bodies are refused with 413.
        :param idle_timeout_s: an idle keep-alive connection is closed after this long.
        :param health: returns the JSON document of ``GET /healthz`` once :meth:`set_ready`.
        """
        self.bind_host = host
        self.requested_port = int(port)
        self.token = token or os.environ.get(protocol.ENV_AUTH_TOKEN) or secrets.token_urlsafe(32)
        self.region = region or os.environ.get(protocol.ENV_REGION) or DEFAULT_REGION
        self.client_file_path = (client_file or clientfile.default_path()) if write_client_file else None
        self.max_body_bytes = int(max_body_bytes)
        self.idle_timeout_s = float(idle_timeout_s)
        self.board = WorkBoard(result_timeout_s=result_timeout_s, attach_grace_s=attach_grace_s)
        self._health = health
        self._ready = False
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._inflight = 0
        self._inflight_changed = threading.Condition()
        self._stopped = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "IPCHost":
        """Bind, start serving in a background thread and write the client file."""
        if self._server is not None:
            raise RuntimeError("IPCHost already started")
        self._server = _Server((self.bind_host, self.requested_port), self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="ipc-host-{}".format(self.port), daemon=True)
        self._thread.start()
        if self.client_file_path:
            clientfile.write(self.client_file_path, self.connect_host, self.port, self.token,
                             self.region)
        log.info("IPC host listening on %s:%d%s", self.bind_host, self.port,
                 " (client file {})".format(self.client_file_path) if self.client_file_path else "")
        return self

    def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop gracefully: refuse new work (503), let in-flight requests finish for up to
        `grace_s` seconds, fail what is still unanswered, then close and remove the client file."""
        if self._server is None or self._stopped:
            return
        self._stopped = True
        self.board.start_draining()
        if not self._wait_idle(grace_s):
            failed = self.board.fail_pending("the IPC host shut down before the function answered")
            log.warning("IPC host shutdown: %d invocation(s) still unanswered after %.1f s", failed,
                        grace_s)
            self._wait_idle(1.0)
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self.client_file_path:
            clientfile.remove_if_ours(self.client_file_path, self.token)
        log.info("IPC host on port %d stopped", self.port)

    def __enter__(self) -> "IPCHost":
        return self.start() if self._server is None else self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    # -- what the owner controls --------------------------------------------------------------

    def register_function(self, function_arn: str) -> None:
        """Declare that a worker will serve `function_arn` (post_work for it is accepted)."""
        self.board.register(function_arn)

    def unregister_function(self, function_arn: str) -> None:
        self.board.unregister(function_arn)

    def set_ready(self, ready: bool = True) -> None:
        """From now on ``GET /healthz`` answers 200 with the health callback's document."""
        self._ready = ready

    def set_health(self, health: Optional[HealthCallback]) -> None:
        self._health = health

    def initialization(self, function_arn: str) -> Optional[Dict[str, object]]:
        """``{"Success", "Response"}`` as a worker reported it via ``initialized``, or None."""
        return self.board.initialization(function_arn)

    def client(self, timeout: Optional[float] = None) -> "IPCClient":
        """An :class:`connector.ipc.client.IPCClient` connected to this host."""
        from .client import IPCClient  # the host must not need the client to import
        return IPCClient(host=self.connect_host, port=self.port, token=self.token, timeout=timeout)

    # -- facts --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    @property
    def connect_host(self) -> str:
        """The address a local client should connect to (loopback for a wildcard bind)."""
        if self.bind_host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if self.bind_host == "::":
            return "::1"
        return self.bind_host

    @property
    def url(self) -> str:
        host = self.connect_host
        return "http://{}:{}".format("[{}]".format(host) if ":" in host else host, self.port)

    def health(self) -> Tuple[int, Dict[str, Any]]:
        """(status, document) of ``GET /healthz``."""
        if self.board.draining:
            return 503, {"status": "stopping"}
        if not self._ready:
            return 503, {"status": "starting"}
        if self._health is None:
            return 200, {"status": "ok"}
        try:
            document = self._health()
            if not isinstance(document, dict):
                raise TypeError("health callback returned {}, not a dict".format(type(document).__name__))
            json.dumps(document)  # fail here, with the reason, rather than in the handler
            return 200, document
        except Exception as exc:  # the probe must say why, not drop the connection
            log.exception("health callback failed")
            return 500, {"status": "error", "errorMessage": str(exc)}

    # -- in-flight accounting (called by the request handler) ---------------------------------

    def _request_started(self) -> None:
        with self._inflight_changed:
            self._inflight += 1

    def _request_finished(self) -> None:
        with self._inflight_changed:
            self._inflight -= 1
            self._inflight_changed.notify_all()

    def _wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._inflight_changed:
            while self._inflight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._inflight_changed.wait(remaining)
            return True
