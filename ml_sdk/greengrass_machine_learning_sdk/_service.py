"""One request-reply call to a local service over the Greengrass IPC: post_work, then
get_work_result (the V1 exchange), or both in one frame over our own host's fast path.

The AWS SDK does this through ``greengrass_ipc_python_sdk`` (shipped only inside a Greengrass
core); this is a self-contained equivalent with the same outcomes:

* no function error          -> ``GreengrassServiceCallOutput(response=..., error_response=None)``
* function error ``Handled`` -> ``GreengrassServiceCallOutput(response=None, error_response=...)``
* anything else (unreachable endpoint, non-2xx answer, ``Unhandled`` error such as a timeout)
  -> :class:`GreengrassRuntimeException`
"""
from __future__ import annotations

import collections
import http.client
import json
import math
import os
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import quote

from . import _endpoint, _fast

API_VERSION = "2016-11-01"
HEADER_AUTH_TOKEN = "Authorization"
HEADER_INVOCATION_ID = "X-Amz-InvocationId"
HEADER_CLIENT_CONTEXT = "X-Amz-Client-Context"
HEADER_INVOCATION_TYPE = "X-Amz-Invocation-Type"
HEADER_FUNCTION_ERROR = "X-Amz-Function-Error"

GreengrassServiceMessage = collections.namedtuple("GreengrassServiceMessage", ["context", "payload"])
GreengrassServiceCallOutput = collections.namedtuple("GreengrassServiceCallOutput",
                                                     ["response", "error_response"])


class GreengrassRuntimeException(Exception):
    """The call failed outside the service (mapped to GreengrassDependencyException).

    ``accepted`` is False when the host never took the work (the post failed), so calling again
    cannot run it twice; ``retry_after`` is the seconds a host asked the caller to wait before
    posting again (503 with Retry-After: the service is starting), else None."""

    accepted = True
    retry_after = None  # type: Optional[float]


def error_message_of(payload: bytes) -> str:
    """The ``errorMessage`` of a function-error payload, or the payload as text."""
    try:
        document = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return payload.decode("utf-8", "replace")
    if isinstance(document, dict) and "errorMessage" in document:
        return str(document["errorMessage"])
    return payload.decode("utf-8", "replace")


def error_type_of(payload: bytes) -> Optional[str]:
    """The ``errorType`` of a function-error payload, if it names one."""
    try:
        document = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    error_type = document.get("errorType") if isinstance(document, dict) else None
    return str(error_type) if error_type else None


# The default socket timeout of an IPC request: the service's own timeout (from the standalone
# host's client file) plus a margin for its answer to travel, so the service's timeout error
# arrives first; where the service's timeout is unknown (inside Greengrass), a generous bound
# that still ends a call to a core that hangs.
TIMEOUT_MARGIN_S = 5.0
DEFAULT_TIMEOUT_S = 120.0


def default_timeout(endpoint: _endpoint.Endpoint) -> float:
    if endpoint.timeout_s:
        return float(endpoint.timeout_s) + TIMEOUT_MARGIN_S
    return DEFAULT_TIMEOUT_S


class GreengrassServiceClient(object):
    def __init__(self, timeout: Optional[float] = None) -> None:
        """:param timeout: socket timeout of each IPC request (None: :func:`default_timeout`)."""
        self.timeout = timeout
        self._local = threading.local()  # .connections: (pid, host, port) -> this thread's open one

    def call(self, address: str, message: GreengrassServiceMessage,
             endpoint: Optional[_endpoint.Endpoint] = None) -> GreengrassServiceCallOutput:
        """Invoke the function at `address` with `message` and wait for its answer: over the
        host's fast path where it offers one (see :mod:`._fast`), else the V1 exchange."""
        endpoint = endpoint or _endpoint.resolve()
        context = message.context
        if isinstance(context, (bytes, bytearray)):
            context = bytes(context).decode("ascii")
        context = context or ""
        if (endpoint.fast is not None and _fast.wanted()
                and _fast.eligible(endpoint.token, address, context)):
            try:
                return self._retrying(endpoint, lambda: self._fast_call(
                    endpoint, address, message.payload, context))
            except _fast.Unavailable:
                _fast.give_up()  # this process uses the V1 exchange from now on
        path = _path(address)
        headers = self._retrying(endpoint, lambda: self._post(endpoint, path, message.payload, context))
        invocation_id = headers.get(HEADER_INVOCATION_ID)
        if not invocation_id:
            raise GreengrassRuntimeException(
                "the IPC accepted work for {} without an invocation id".format(address))
        _, headers, payload = self._request(endpoint, "GET", path, None,
                                            {HEADER_INVOCATION_ID: invocation_id})
        return _outcome(address, headers.get(HEADER_FUNCTION_ERROR), payload)

    def _post(self, endpoint: _endpoint.Endpoint, path: str, payload: Optional[bytes],
              context: str) -> http.client.HTTPMessage:
        """post_work; a failure means the host did not take the work."""
        try:
            _, headers, _ = self._request(endpoint, "POST", path, payload, {
                HEADER_CLIENT_CONTEXT: context, HEADER_INVOCATION_TYPE: "RequestResponse"})
        except GreengrassRuntimeException as exc:
            exc.accepted = False
            raise
        return headers

    def _retrying(self, endpoint: _endpoint.Endpoint, attempt: Callable[[], Any]) -> Any:
        """`attempt()`; while the host says the service is starting (503 with Retry-After, the
        work not taken), wait as it asks and try again, within the call's own timeout."""
        deadline = time.monotonic() + self._timeout(endpoint)
        while True:
            try:
                return attempt()
            except GreengrassRuntimeException as exc:
                wait = exc.retry_after
                if wait is None or exc.accepted or time.monotonic() + wait >= deadline:
                    raise
                time.sleep(wait)

    def _timeout(self, endpoint: _endpoint.Endpoint) -> float:
        return self.timeout if self.timeout is not None else default_timeout(endpoint)

    # -- the fast path --------------------------------------------------------------------------

    def _fast_call(self, endpoint: _endpoint.Endpoint, address: str, payload: Optional[bytes],
                   context: str) -> GreengrassServiceCallOutput:
        """One call over the fast path: the same outcome, exception and message as the V1
        exchange's for the same answer; _fast.Unavailable when it cannot be used at all."""
        frame = _fast.request_parts(endpoint.token, address, context, payload or b"")
        # One connection per thread and per process, as for HTTP (see _request).
        key = (os.getpid(), endpoint.fast.path)
        kept_by_key = self._local.__dict__.setdefault("fast", {})
        sock = kept_by_key.pop(key, None)
        kept = sock is not None
        try:
            try:
                if sock is None:
                    sock = _fast.connect(endpoint.fast, self._timeout(endpoint))
                answer = _fast.exchange(sock, frame)
            except _fast.Closed as closed:
                if not kept or closed.got_any:
                    raise
                # The host closed the idle connection (an idle timeout, eviction) before reading
                # this frame: nothing ran, so one try on a fresh connection is safe.
                sock.close()
                sock = _fast.connect(endpoint.fast, self._timeout(endpoint))
                answer = _fast.exchange(sock, frame)
        except _fast.Unavailable:
            if sock is not None:
                sock.close()
            raise
        except (OSError, _fast.Closed) as exc:
            sock.close()
            raise GreengrassRuntimeException("cannot reach the Greengrass IPC at {}:{} ({}, fast "
                                             "path {}): {}".format(
                                                 endpoint.host, endpoint.port, endpoint.source,
                                                 endpoint.fast.path, exc or type(exc).__name__))
        if answer.flags & _fast.FLAG_CLOSING:
            sock.close()
        else:
            kept_by_key[key] = sock
        return _fast_outcome(endpoint, address, answer)

    def call_found(self, address_of: Callable[[_endpoint.Endpoint], str],
                   message: GreengrassServiceMessage, service_name: Optional[str] = None
                   ) -> Tuple[GreengrassServiceCallOutput, str]:
        """:meth:`call` at the endpoint found for `service_name` (kept between calls, see
        :func:`_endpoint.cached`), and the address called. When a kept endpoint fails before the
        host took the work (the host restarted on another port or with another token), the
        endpoint is looked up again and, if it changed, the call is made once more there;
        otherwise the failure stands."""
        endpoint = _endpoint.cached(service_name=service_name)
        address = address_of(endpoint)
        try:
            return self.call(address, message, endpoint), address
        except GreengrassRuntimeException as exc:
            if not _endpoint.forget(endpoint) or exc.accepted:
                raise
            fresh = _endpoint.cached(service_name=service_name)
            if fresh == endpoint:
                raise
        address = address_of(fresh)
        return self.call(address, message, fresh), address

    def _request(self, endpoint: _endpoint.Endpoint, method: str, path: str,
                 body: Optional[bytes], headers: Dict[str, str]
                 ) -> Tuple[int, http.client.HTTPMessage, bytes]:
        headers = dict(headers)
        headers[HEADER_AUTH_TOKEN] = endpoint.token
        # Keep-alive: a new connection per call costs a connect and, on the host, a thread start
        # (about 0.3 ms of the 0.6 ms an exchange takes on loopback). One connection per thread,
        # since http.client connections must not be shared, and per process: a forked child must
        # not talk over its parent's socket.
        key = (os.getpid(), endpoint.host, endpoint.port)
        kept_by_key = self._local.__dict__.setdefault("connections", {})
        kept = kept_by_key.pop(key, None)

        def fresh() -> http.client.HTTPConnection:
            return http.client.HTTPConnection(
                endpoint.host, endpoint.port,
                timeout=self.timeout if self.timeout is not None else default_timeout(endpoint))

        connection = kept or fresh()
        try:
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                if kept is None:
                    raise
                # The host closed the idle connection before reading this request (it restarted,
                # or an idle timeout): nothing was processed, so one retry on a fresh one is safe.
                connection.close()
                connection = fresh()
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise GreengrassRuntimeException("cannot reach the Greengrass IPC at {}:{} ({}): {}".format(
                endpoint.host, endpoint.port, endpoint.source, exc or type(exc).__name__))
        if response.will_close:
            connection.close()
        else:
            kept_by_key[key] = connection
        if not 200 <= response.status < 300:
            error = GreengrassRuntimeException("the Greengrass IPC at {}:{} answered {} {} to {} {}: {}".format(
                endpoint.host, endpoint.port, response.status, response.reason, method, path,
                error_message_of(data)))
            error.retry_after = _retry_after(response) if response.status == 503 else None
            raise error
        return response.status, response.headers, data


def _outcome(address: str, function_error: Optional[str], payload: bytes
             ) -> GreengrassServiceCallOutput:
    """The result of get_work_result: the answer, a Handled error, or GreengrassRuntimeException."""
    if not function_error:
        return GreengrassServiceCallOutput(GreengrassServiceMessage("", payload), None)
    if function_error == "Handled":
        return GreengrassServiceCallOutput(None, GreengrassServiceMessage("", payload))
    raise GreengrassRuntimeException("{} failed with a function error {}: {}".format(
        address, function_error, error_message_of(payload)))


def _path(address: str) -> str:
    """The V1 exchange's request path for `address` (ARN characters are path-safe but for a few;
    quoting the rest keeps http.client and the host in agreement)."""
    return "/{}/functions/{}".format(API_VERSION, quote(address, safe=":$@!*'()+,;=-._~"))


def _fast_outcome(endpoint: _endpoint.Endpoint, address: str, answer: "_fast.Answer"
                  ) -> GreengrassServiceCallOutput:
    """What the V1 exchange's call would give for the same answer, in the same words."""
    if answer.call == _fast.CALL_FRAME and answer.error_type == "UnsupportedVersion":
        raise _fast.Unavailable(error_message_of(answer.payload))
    if 200 <= answer.status < 300:
        return _outcome(address, answer.function_error, answer.payload)
    method = "GET" if answer.call == _fast.CALL_GET_WORK_RESULT else "POST"
    error = GreengrassRuntimeException("the Greengrass IPC at {}:{} answered {} {} to {} {}: {}".format(
        endpoint.host, endpoint.port, answer.status, answer.reason, method, _path(address),
        error_message_of(answer.payload)))
    error.accepted = answer.call == _fast.CALL_GET_WORK_RESULT
    error.retry_after = _retry_seconds(answer.retry_after) if answer.status == 503 else None
    raise error


def _retry_after(response: http.client.HTTPResponse) -> Optional[float]:
    return _retry_seconds(response.getheader("Retry-After") or "")


def _retry_seconds(text: str) -> Optional[float]:
    """Retry-After in seconds (0.05 to 5; a date or anything else: None, do not retry)."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        return None
    return min(max(seconds, 0.05), 5.0) if math.isfinite(seconds) else None
