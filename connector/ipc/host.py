"""The standalone IPC host: the part of a Greengrass V1 core that local programs talk to.

It speaks the core's local IPC protocol (see :mod:`connector.ipc.protocol` and the status table in
:mod:`connector.ipc.routes`) on loopback, so the unchanged ``greengrass_machine_learning_sdk`` and
any Lambda-style worker (:func:`connector.ipc.runtime.run_lambda`) work without Greengrass::

    host = IPCHost(port=0, result_timeout_s=10, name="objectDetection").start()
    token = host.register_function(service_arn)  # post_work for it is accepted from now on
    threading.Thread(target=run_lambda, args=(service_arn, handler, host.function_client(service_arn)),
                     kwargs={"stop_event": stop}).start()
    host.set_ready()                             # GET /healthz answers 200 from now on
    ...
    host.shutdown(grace_s=5)

Who may do what (SPEC section 4) is :mod:`connector.ipc.auth`: callers hold :attr:`IPCHost.token`
(the client file carries it); each function gets its own token from :meth:`register_function`.
How a function gets its token: in this process, :meth:`IPCHost.function_client` (no token
travels at all); in another process, the way a core hands it to its Lambda, in
``AWS_CONTAINER_AUTHORIZATION_TOKEN``, or from the host's function-token file next to the client
file (mode 0600, never group-readable; see :mod:`connector.ipc.clientfile`), which ``attach``
reads.

Beside the V1 exchange on its port, a host with a client file offers our SDK the fast path
(:mod:`connector.ipc.fast`): a private Unix socket beside the client file, named in its entry,
served by the same calls (:mod:`connector.ipc.calls`) under the same guard, bounds and shutdown.

Which ARNs count as served is documented in :mod:`connector.ipc.workboard`; the routes, status
codes and probes in :mod:`connector.ipc.routes`; the bounds on connections and bodies
(:class:`HostLimits`) in :mod:`connector.ipc.http.guard`.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from .. import settings
from ..errors import HostStartError, shorten
from . import clientfile
from .auth import Credentials, Principal, new_token
from .clientfile import DEFAULT_NAME
from .http.guard import (DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEAD_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS,
                         DEFAULT_MAX_READING_BYTES, ConnectionGuard)
from .fast import frames, socketfile
from .fast.server import FastServer
from .fast.socketfile import Bound, remove
from .http.server import HardenedServer
from .routes import GreengrassHandler
from .invocations import AdmissionHook
from .workboard import DEFAULT_MAX_QUEUED, DEFAULT_MAX_QUEUED_BYTES, WorkBoard

if TYPE_CHECKING:  # pragma: no cover
    from .client import IPCClient
    from .local import BoardClient

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024

HealthCallback = Callable[[], Dict[str, Any]]


@dataclass(frozen=True)
class HostLimits:
    """Every bound of the host, in one place (the README's Limits section explains each)."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # a larger body is refused with 413, unread
    idle_timeout_s: float = 60.0  # an idle keep-alive connection is closed after this long
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # see http.guard
    head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_reading_bytes: int = DEFAULT_MAX_READING_BYTES
    max_queued: int = DEFAULT_MAX_QUEUED  # see workboard
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES

    def guard(self) -> ConnectionGuard:
        # A body the host accepts must fit the budgets, or it would be refused as "busy" forever.
        return ConnectionGuard(max_connections=self.max_connections,
                               head_timeout_s=self.head_timeout_s, idle_timeout_s=self.idle_timeout_s,
                               body_timeout_s=self.body_timeout_s,
                               max_reading_bytes=self.max_reading_bytes,
                               largest_body_bytes=self.max_body_bytes)


class _Server(HardenedServer):
    """The hardened server, with the IPC host its Greengrass routes answer from."""

    def __init__(self, address: Tuple[str, int], ipc_host: "IPCHost") -> None:
        self.ipc_host = ipc_host
        super().__init__(address, GreengrassHandler, ipc_host.guard, ipc_host.limits.max_body_bytes,
                         ipc_host.limits.idle_timeout_s)


class IPCHost(object):
    """A Greengrass-compatible local IPC endpoint that any process on this machine can use."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: Optional[str] = None,
                 region: Optional[str] = None, name: str = DEFAULT_NAME,
                 client_file: Optional[str] = None, write_client_file: bool = True,
                 client_file_group: Optional[str] = None, result_timeout_s: float = 30.0,
                 attach_grace_s: float = 60.0, health: Optional[HealthCallback] = None,
                 limits: HostLimits = HostLimits(), fast: bool = True) -> None:
        """
        :param host: address to bind; loopback unless you mean it (the tokens are the only guard).
        :param port: TCP port; 0 picks a free one (read it back from :attr:`port`).
        :param token: the callers' token (written to the client file); default
            ``$AWS_CONTAINER_AUTHORIZATION_TOKEN`` or a fresh random one. Functions get their own
            (:meth:`register_function`).
        :param region: written to the client file so the SDK builds the same ARNs as the owner;
            default ``$AWS_REGION`` or us-east-1.
        :param name: this host's entry in the client file (``serve`` uses its service name).
        :param client_file: where to write the client file; default
            :func:`connector.ipc.clientfile.default_path`.
        :param write_client_file: False for hosts that clients find by other means (tests).
        :param client_file_group: a group that may read the client file (not the function tokens).
        :param result_timeout_s: how long after post_work an invocation may take before the
            caller gets an ``Unhandled`` timeout error (per function: :meth:`register_function`).
        :param attach_grace_s: see the served-ARN rule in :mod:`connector.ipc.workboard`.
        :param health: returns the JSON document of ``GET /healthz`` once :meth:`set_ready`.
        :param limits: the connection, body and queue bounds.
        :param fast: offer our SDK the fast path (:mod:`connector.ipc.fast`) beside the client
            file; False: the V1 exchange only, as an older host.
        """
        self.bind_host = host
        self.requested_port = int(port)
        self.credentials = Credentials(token or settings.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
                                       or new_token())
        self.region = region or settings.get("AWS_REGION")
        self.name = name
        self.client_file_path = (client_file or clientfile.default_path()) if write_client_file else None
        self.client_file_group = client_file_group
        self.limits = limits
        self.guard = limits.guard()
        self.board = WorkBoard(result_timeout_s=result_timeout_s, attach_grace_s=attach_grace_s,
                               max_queued=limits.max_queued,
                               max_queued_bytes=max(limits.max_queued_bytes, limits.max_body_bytes))
        self._health = health
        self._metrics: Optional[Callable[[], str]] = None
        self._readiness: Optional[Callable[[], bool]] = None
        self._ready = False
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._stopped = False
        self._published = False
        self._offer_fast = fast
        self._fast: Optional[FastServer] = None
        self._fast_bound: Optional[Bound] = None

    @property
    def token(self) -> str:
        """The callers' token (what the client file carries)."""
        return self.credentials.callers_token

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "IPCHost":
        """Bind, start serving in a background thread and write the client file.

        Raises :class:`HostStartError` (one line: what failed and how to fix it) when the
        address cannot be bound or the client file cannot be written safely."""
        if self._server is not None:
            raise RuntimeError("IPCHost already started")
        if self.client_file_path:
            # before binding: fail fast, clean
            clientfile.check_directory(self.client_file_path, self.client_file_group)
        try:
            self._server = _Server((self.bind_host, self.requested_port), self)
        except (OSError, OverflowError, UnicodeError, ValueError) as exc:
            raise HostStartError("cannot listen on {}:{}: {}".format(
                self.bind_host, self.requested_port, _reason(exc))) from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="ipc-host-{}".format(self.port), daemon=True)
        self._thread.start()
        if self.client_file_path:
            try:
                clientfile.publish(self.client_file_path, self.name, self.connect_host, self.port,
                                   self.token, self.region, timeout_s=self.board.result_timeout_s,
                                   group=self.client_file_group,
                                   fast=self._bind_fast if self._offer_fast else None)
                self._published = True
                self._publish_function_tokens()
            except Exception:
                self._server.shutdown()
                self._server.server_close()
                if self._fast_bound is not None:
                    remove(self._fast_bound)
                raise
            if self._fast_bound is not None:
                self._fast = FastServer(self, self._fast_bound, self.guard, self._server.inflight,
                                        self.limits.max_body_bytes, self.limits.idle_timeout_s).start()
        # debug: a start-up that fails after this must print one line, its error
        log.debug("IPC host listening on %s:%d%s", self.bind_host, self.port,
                 " (client file {})".format(self.client_file_path) if self.client_file_path else "")
        return self

    def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop gracefully: refuse new work (503), let in-flight requests finish for up to
        `grace_s` seconds, fail what is still unanswered, then close and remove our client-file
        entry (never another host's)."""
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
        if self._fast is not None:
            self._fast.close()  # no new connection; its socket file is removed
        self.guard.hang_up_all()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._published and self.client_file_path:
            clientfile.withdraw(self.client_file_path, self.name, self.token)
        log.debug("IPC host on port %d stopped", self.port)

    def __enter__(self) -> "IPCHost":
        return self.start() if self._server is None else self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    # -- what the owner controls --------------------------------------------------------------

    def register_function(self, function_arn: str, token: Optional[str] = None, served: bool = True,
                          timeout_s: Optional[float] = None,
                          timeout_message: Optional[str] = None,
                          admit: Optional[AdmissionHook] = None) -> str:
        """Declare a function this host serves and return its token (see the module docstring).

        :param token: the function's token; default a fresh random one.
        :param served: True: post_work for it is accepted from now on (the function runs in this
            process or is sure to attach); False: only while its worker polls (served-ARN rule).
        :param timeout_s, timeout_message: its invocations' timeout and the caller's message.
        :param admit: judges each post_work from the poster's :class:`Principal` before it is
            queued (see :mod:`connector.ipc.workboard`, admission).
        """
        token = self.credentials.give(function_arn, token)
        self.board.register(function_arn, served=served, timeout_s=timeout_s,
                            timeout_message=timeout_message, admit=admit)
        self._publish_function_tokens()
        return token

    def unregister_function(self, function_arn: str) -> None:
        """Stop accepting work for it; its token stays valid for the work already taken."""
        self.board.unregister(function_arn)

    def function_token(self, function_arn: str) -> Optional[str]:
        return self.credentials.function_token(function_arn)

    def function_client(self, function_arn: str) -> "BoardClient":
        """The in-process worker side of a registered function (what ``serve`` runs)."""
        from .local import BoardClient
        if self.credentials.function_token(function_arn) is None:
            self.register_function(function_arn)
        return BoardClient(self.board, function_arn)

    def set_ready(self, ready: bool = True) -> None:
        """From now on ``GET /healthz`` answers 200 with the health callback's document."""
        self._ready = ready

    def set_health(self, health: Optional[HealthCallback]) -> None:
        self._health = health

    def set_metrics(self, metrics: Optional[Callable[[], str]]) -> None:
        """``GET /metrics`` (with a valid token) answers this callback's Prometheus text."""
        self._metrics = metrics

    def metrics(self) -> Tuple[int, str]:
        """(status, text) of ``GET /metrics``."""
        callback = self._metrics
        if callback is None:
            return 404, "no metrics: this host serves no connector in-process\n"
        try:
            return 200, callback()
        except Exception as exc:  # the scrape must say why, not drop the connection
            log.exception("metrics callback failed")
            return 500, "metrics failed: {}\n".format(shorten(exc, 200))

    def set_readiness(self, readiness: Optional[Callable[[], bool]]) -> None:
        """``GET /readyz`` answers 200 only while this says True (and the host is ready)."""
        self._readiness = readiness

    def initialization(self, function_arn: str) -> Optional[Dict[str, object]]:
        """``{"Success", "Response"}`` as a worker reported it via ``initialized``, or None."""
        return self.board.initialization(function_arn)

    def client(self, timeout: Optional[float] = None,
               function_arn: Optional[str] = None) -> "IPCClient":
        """An :class:`connector.ipc.client.IPCClient` for this host: a caller's, or with
        `function_arn` that function's (registering it when needed)."""
        from .client import IPCClient  # the host must not need the client to import
        token = self.token
        if function_arn is not None:
            token = self.credentials.function_token(function_arn) or self.register_function(function_arn)
        return IPCClient(host=self.connect_host, port=self.port, token=token, timeout=timeout)

    def principal(self, token: str) -> Optional[Principal]:
        """Who holds `token`, None for nobody."""
        return self.credentials.principal(token)

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

    def health(self, detailed: bool = True) -> Tuple[int, Dict[str, Any]]:
        """(status, document) of ``GET /healthz``; without `detailed` (no valid token) only
        ``{"status": ...}``: the rest (ARN, model, pids, counters) helps an attacker only."""
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
        except Exception as exc:  # the probe must say why, not drop the connection
            log.exception("health callback failed")
            return 500, ({"status": "error", "errorMessage": shorten(exc, 200)} if detailed
                         else {"status": "error"})
        return 200, (document if detailed else {"status": "ok"})

    def liveness(self) -> Tuple[int, Dict[str, Any]]:
        """``GET /livez``: the host answers (even while its function's worker restarts)."""
        return (503, {"status": "stopping"}) if self.board.draining else (200, {"status": "alive"})

    def readiness(self) -> Tuple[int, Dict[str, Any]]:
        """``GET /readyz``: a request sent now can be served without waiting for a restart."""
        if self.board.draining:
            return 503, {"status": "stopping"}
        if not self._ready:
            return 503, {"status": "starting"}
        try:
            ready = self._readiness() if self._readiness is not None else True
        except Exception:  # a probe must answer
            log.exception("readiness callback failed")
            ready = False
        return (200, {"status": "ready"}) if ready else (503, {"status": "not ready"})

    def describe_connections(self) -> Dict[str, Any]:
        """The health document's ``connections``: the guard's counters (both transports) and the
        frames the fast path received (``fast_frames``; ``fast``: whether it is offered)."""
        fast = self._fast
        return dict(self.guard.describe(), fast=fast is not None,
                    fast_frames=fast.frames if fast is not None else 0)

    @property
    def fast_path(self) -> Optional[str]:
        """The fast path's socket while it is offered, else None."""
        return self._fast_bound.path if self._fast_bound is not None and not self._stopped else None

    def _bind_fast(self) -> Optional[Dict[str, Any]]:
        """Called under the client file's lock (see clientfile.publish): the socket, made private
        beside the client file, and the entry's "fast"; None (and a warning) when it cannot be."""
        assert self.client_file_path
        group = self.client_file_group
        self._fast_bound, why = socketfile.bind(
            socketfile.path_for(self.client_file_path, self.name), 0o660 if group else 0o600,
            clientfile.group_id(group) if group else None)
        if self._fast_bound is None:
            log.warning("the fast path is off, callers use the V1 exchange: %s", why)
            return None
        return {"unix": self._fast_bound.path, "protocol": frames.VERSION}

    # -- function tokens for functions attaching from other processes --------------------------

    def _publish_function_tokens(self) -> None:
        tokens = self.credentials.function_tokens()
        if self._published and self.client_file_path and tokens:
            clientfile.publish_function_tokens(self.client_file_path, self.name, tokens)

    def _wait_idle(self, timeout_s: float) -> bool:
        return self._server is None or self._server.inflight.wait_idle(timeout_s)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
