"""A client of the Greengrass V1 local IPC protocol, for a real core or the standalone host.

Same calls and results as the core's ``greengrass_ipc_python_sdk.ipc_client.IPCClient`` (which is
not on PyPI and needs ``greengrass_common``), written with ``http.client`` so that timeouts and
interrupting a long poll are possible. Differences, all additive: explicit host/port/token
arguments, :meth:`IPCClient.post_work_result` takes the invocation id and payload instead of a
WorkItem, :meth:`IPCClient.post_handler_err` can add an ``errorType``, and failures raise
:class:`IPCError` carrying the HTTP status.
"""
from __future__ import annotations

import collections
import http.client
import json
import socket
import threading
from typing import Dict, Mapping, Optional, Set, Tuple, Union

from .. import settings
from ..errors import IPCError
from . import clientfile
from . import protocol

# deadline (time.monotonic) and cancelled (True once the caller no longer waits) are known only
# where the board is in the same process (connector.ipc.local); over HTTP they stay None.
WorkItem = collections.namedtuple("WorkItem", ["invocation_id", "payload", "client_context",
                                               "deadline", "cancelled"])
WorkItem.__new__.__defaults__ = (None, None)
GetWorkResultOutput = collections.namedtuple("GetWorkResultOutput", ["payload", "func_err"])

Payload = Union[bytes, bytearray, memoryview, str, None]


def _as_bytes(payload: Payload) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return bytes(payload)


class IPCClient(object):
    """Speaks post_work, get_work, post_work_result, post_handler_err, get_work_result, initialized."""

    def __init__(self, host: Optional[str] = None, port: Optional[int] = None,
                 token: Optional[str] = None, timeout: Optional[float] = None,
                 poll_timeout: Optional[float] = None) -> None:
        """
        Defaults come from the Lambda environment, as inside a Greengrass core: host localhost,
        ``$GG_DAEMON_PORT`` (8000), ``$AWS_CONTAINER_AUTHORIZATION_TOKEN``.

        :param timeout: socket timeout of every call except get_work (None: wait as long as the
            other end takes, like the core's client).
        :param poll_timeout: socket timeout of the get_work long poll (None: forever).
        """
        if port is None or token is None:
            from_env = IPCClient.from_environment()
            port = from_env.port if port is None else port
            token = from_env.token if token is None else token
        self.host = host or "localhost"
        self.port = int(port)
        self.token = token
        self.timeout = timeout
        self.poll_timeout = poll_timeout
        self._polls: Set[http.client.HTTPConnection] = set()
        self._open_lock = threading.Lock()

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None,
                         timeout: Optional[float] = None) -> "IPCClient":
        """A client for the core of this Lambda, from `environ` (default the process's)."""
        port_text = settings.get(protocol.ENV_DAEMON_PORT, environ)
        try:
            port = int(port_text)
        except ValueError:
            raise IPCError("{}={!r} is not a port number".format(protocol.ENV_DAEMON_PORT, port_text))
        return cls(host="localhost", port=port, token=settings.get(protocol.ENV_AUTH_TOKEN, environ),
                   timeout=timeout)

    @classmethod
    def from_client_file(cls, path: Optional[str] = None, timeout: Optional[float] = None,
                         name: Optional[str] = None, token: Optional[str] = None) -> "IPCClient":
        """A client for the standalone host described by its client file (entry `name`, else
        the only live one); `token` replaces the callers' token (a function's own).

        ValueError when the file fails the SDK's safety rule (another user could have replaced
        it, and would receive the token): see :func:`connector.ipc.clientfile.refuse_unsafe`."""
        return cls.from_entry(clientfile.read(path or clientfile.default_path(), name),
                              timeout=timeout, token=token)

    @classmethod
    def from_entry(cls, entry: Mapping[str, object], timeout: Optional[float] = None,
                   token: Optional[str] = None) -> "IPCClient":
        """A client for one entry that :func:`connector.ipc.clientfile.read` returned (checked)."""
        return cls(host=str(entry.get("host") or "127.0.0.1"), port=int(str(entry["port"])),
                   token=token or str(entry["token"]), timeout=timeout)

    def __repr__(self) -> str:
        return "IPCClient(host={!r}, port={})".format(self.host, self.port)

    # -- the protocol -------------------------------------------------------------------------

    def post_work(self, function_arn: str, payload: Payload, client_context: Union[str, bytes] = "",
                  invocation_type: str = protocol.INVOCATION_REQUEST_RESPONSE) -> str:
        """Queue work for `function_arn`; return its invocation id."""
        if isinstance(client_context, (bytes, bytearray)):
            client_context = bytes(client_context).decode("ascii")
        _, headers, _ = self._call("POST", protocol.function_path(function_arn), _as_bytes(payload), {
            protocol.HEADER_CLIENT_CONTEXT: client_context or "",
            protocol.HEADER_INVOCATION_TYPE: invocation_type,
        })
        invocation_id = headers.get(protocol.HEADER_INVOCATION_ID)
        if not invocation_id:
            raise IPCError("post_work for {} was accepted without an {}".format(
                function_arn, protocol.HEADER_INVOCATION_ID))
        return invocation_id

    def get_work(self, function_arn: str) -> WorkItem:
        """Block until work for `function_arn` arrives (long poll); :meth:`interrupt_polls` ends it."""
        _, headers, body = self._call("GET", protocol.function_path(function_arn, protocol.ENDPOINT_WORK),
                                      None, {}, timeout=self.poll_timeout, poll=True)
        return WorkItem(invocation_id=headers.get(protocol.HEADER_INVOCATION_ID), payload=body,
                        client_context=headers.get(protocol.HEADER_CLIENT_CONTEXT) or "")

    def post_work_result(self, function_arn: str, invocation_id: str, payload: Payload) -> None:
        self._call("POST", protocol.function_path(function_arn, protocol.ENDPOINT_WORK),
                   _as_bytes(payload), {protocol.HEADER_INVOCATION_ID: invocation_id})

    def post_handler_err(self, function_arn: str, invocation_id: str, message: str,
                         error_type: Optional[str] = None) -> None:
        """Report that the handler failed: the caller sees a ``Handled`` function error."""
        self._call("POST", protocol.function_path(function_arn, protocol.ENDPOINT_WORK),
                   protocol.error_body(message, error_type), {
                       protocol.HEADER_INVOCATION_ID: invocation_id,
                       protocol.HEADER_FUNCTION_ERROR: protocol.FUNCTION_ERROR_HANDLED,
                   })

    def get_work_result(self, function_arn: str, invocation_id: str) -> GetWorkResultOutput:
        """Block until the invocation is answered; func_err is None, "Handled" or "Unhandled"."""
        _, headers, body = self._call("GET", protocol.function_path(function_arn), None,
                                      {protocol.HEADER_INVOCATION_ID: invocation_id})
        return GetWorkResultOutput(payload=body, func_err=headers.get(protocol.HEADER_FUNCTION_ERROR))

    def initialized(self, function_arn: str, success: bool = True, response: str = "") -> None:
        """Tell the core whether the function finished initialising (PUT .../initialized)."""
        body = json.dumps({"Success": bool(success), "Response": response}, ensure_ascii=False)
        self._call("PUT", protocol.function_path(function_arn, protocol.ENDPOINT_INITIALIZED),
                   body.encode("utf-8"), {})

    def interrupt_polls(self) -> None:
        """Abort the get_work long polls in progress (they raise IPCError); other calls go on,
        so a result being posted is never lost by stopping."""
        with self._open_lock:
            connections = list(self._polls)
        for connection in connections:
            sock = connection.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    # -- transport ----------------------------------------------------------------------------

    _UNSET = object()

    def _call(self, method: str, path: str, body: Optional[bytes], headers: Dict[str, str],
              timeout: object = _UNSET, poll: bool = False
              ) -> Tuple[int, http.client.HTTPMessage, bytes]:
        connection = http.client.HTTPConnection(
            self.host, self.port, timeout=self.timeout if timeout is IPCClient._UNSET else timeout)
        headers = dict(headers)
        headers[protocol.HEADER_AUTH_TOKEN] = self.token
        if poll:
            with self._open_lock:
                self._polls.add(connection)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise IPCError("IPC {} {} to {}:{} failed: {}".format(
                method, path, self.host, self.port, exc or type(exc).__name__))
        finally:
            with self._open_lock:
                self._polls.discard(connection)
            connection.close()
        if not 200 <= response.status < 300:
            error_type = None
            try:
                error_type = json.loads(data.decode("utf-8")).get("errorType")
            except (ValueError, UnicodeDecodeError, AttributeError):
                pass
            raise IPCError("IPC {} {} answered {} {}: {}".format(
                method, path, response.status, response.reason, protocol.error_message_of(data)),
                status=response.status, error_type=error_type)
        return response.status, response.headers, data
