"""The standalone IPC host, byte for byte, over real HTTP on loopback (no model involved)."""
from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import stat
import threading
import time

import pytest

from connector.ipc import clientfile, protocol
from connector.ipc.host import HostLimits, IPCHost

ARN = "arn:aws:lambda:us-east-1:aws:function:GG-ML-INF-object-detection-svc"
BASE = protocol.function_path(ARN)
WORK = protocol.function_path(ARN, "work")
INITIALIZED = protocol.function_path(ARN, "initialized")
CONTEXT = base64.b64encode(json.dumps({"custom": {"Content-Type": "image/jpeg"}}).encode()).decode()


@pytest.fixture
def host():
    h = IPCHost(write_client_file=False, result_timeout_s=3.0).start()
    h.register_function(ARN)
    yield h
    h.shutdown(grace_s=1.0)


def rightful_token(h, path):
    """The token the protocol wants: the function's own on its work and initialized endpoints,
    the callers' elsewhere."""
    parsed = protocol.parse_function_path(path)
    if parsed and parsed[1] in ("work", "initialized"):
        return h.function_token(parsed[0]) or h.register_function(parsed[0], served=False)
    return h.token


def call(h, method, path, body=None, headers=None, token=True, timeout=5.0):
    """One request on a fresh connection: (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", h.port, timeout=timeout)
    all_headers = {"Authorization": rightful_token(h, path)} if token is True else (
        {"Authorization": token} if token else {})
    all_headers.update(headers or {})
    try:
        connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def raw(h, data: bytes, timeout: float = 5.0) -> bytes:
    """Send hand-made bytes; return everything the host answers before closing."""
    with socket.create_connection(("127.0.0.1", h.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except socket.timeout:
            pass
    return b"".join(chunks)


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def error_of(body: bytes) -> dict:
    document = json.loads(body.decode())
    assert document["errorMessage"]
    return document


def post_work(h, payload=b"data", context=CONTEXT, kind="RequestResponse", arn=ARN):
    status, headers, body = call(h, "POST", protocol.function_path(arn), payload, {
        "X-Amz-Client-Context": context, "X-Amz-Invocation-Type": kind})
    assert status == 202, body
    return headers["X-Amz-InvocationId"]


class Background(threading.Thread):
    """Run a blocking call in a thread; .result or .error afterwards."""

    def __init__(self, target, *args):
        super().__init__(daemon=True)
        self._target_call, self._args = target, args
        self.result = self.error = None
        self.start()

    def run(self):
        try:
            self.result = self._target_call(*self._args)
        except BaseException as exc:  # reported to the test
            self.error = exc


# -- authentication --------------------------------------------------------------------------

def test_missing_token_is_401_and_wrong_token_is_403(host):
    status, headers, body = call(host, "POST", BASE, b"x", token=None)
    assert status == 401
    assert headers["Content-Type"] == "application/json"
    assert "Authorization" in error_of(body)["errorMessage"]
    status, _, body = call(host, "POST", BASE, b"x", token="Bearer " + host.token)
    assert status == 403
    assert error_of(body)["errorType"] == "Forbidden"
    status, _, _ = call(host, "GET", WORK, token="nope")
    assert status == 403


def test_token_defaults_to_the_lambda_environment(monkeypatch):
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "token-from-env")
    with IPCHost(write_client_file=False) as h:
        assert h.token == "token-from-env"
    monkeypatch.delenv("AWS_CONTAINER_AUTHORIZATION_TOKEN")
    with IPCHost(write_client_file=False) as h1, IPCHost(write_client_file=False) as h2:
        assert len(h1.token) >= 32 and h1.token != h2.token


def test_ephemeral_port_is_readable_and_binds_loopback(host):
    assert host.port > 0
    assert host.connect_host == "127.0.0.1"
    assert host.url == "http://127.0.0.1:{}".format(host.port)


# -- refusals of malformed requests ----------------------------------------------------------

def test_unknown_paths_and_methods(host):
    assert call(host, "GET", "/nothing/here", token=None)[0] == 401  # nothing leaks unauthenticated
    status, _, body = call(host, "GET", "/nothing/here")
    assert status == 404 and error_of(body)["errorType"] == "UnknownPath"
    assert call(host, "GET", protocol.FUNCTIONS_PREFIX)[0] == 404
    assert call(host, "GET", BASE + "/other")[0] == 404
    status, headers, body = call(host, "DELETE", BASE)
    assert status == 405 and headers["Allow"] == "GET, POST"
    assert call(host, "PUT", WORK, b"")[0] == 405
    assert call(host, "GET", INITIALIZED)[0] == 405
    status, _, body = call(host, "BREW", BASE)
    assert status == 405 and error_of(body)["errorType"] == "MethodNotAllowed"
    status, _, body = call(host, "POST", "/healthz", b"")
    assert status == 405


def test_bad_client_context_and_invocation_type_are_400(host):
    for bad in ("not base64!", "abc", "####"):
        status, _, body = call(host, "POST", BASE, b"x", {"X-Amz-Client-Context": bad})
        assert status == 400 and error_of(body)["errorType"] == "InvalidClientContext", bad
    status, _, body = call(host, "POST", BASE, b"x", {"X-Amz-Invocation-Type": "DryRun"})
    assert status == 400 and "RequestResponse" in error_of(body)["errorMessage"]


def test_missing_invocation_id_is_400_and_unknown_is_404(host):
    for method, path in (("GET", BASE), ("POST", WORK)):
        status, _, body = call(host, method, path, b"" if method == "POST" else None)
        assert status == 400 and error_of(body)["errorType"] == "MissingInvocationId"
    status, _, body = call(host, "GET", BASE, headers={"X-Amz-InvocationId": "no-such-id"})
    assert status == 404 and "no-such-id" in error_of(body)["errorMessage"]
    status, _, _ = call(host, "POST", WORK, b"r", {"X-Amz-InvocationId": "no-such-id"})
    assert status == 404


def test_content_length_rules(host):
    auth = "Authorization: {}\r\n".format(host.token).encode()
    missing = raw(host, b"POST " + BASE.encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
    assert missing.startswith(b"HTTP/1.1 411 ")
    invalid = raw(host, b"POST " + BASE.encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth
                  + b"Content-Length: ten\r\n\r\n")
    assert invalid.startswith(b"HTTP/1.1 400 ") and b"Content-Length" in invalid
    superscript = raw(host, b"POST " + BASE.encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth
                      + b"Content-Length: \xb2\r\n\r\nab")
    assert superscript.startswith(b"HTTP/1.1 400 ")
    chunked = raw(host, b"POST " + BASE.encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth
                  + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411 ")
    versionless = raw(host, b"GET /healthz\r\n\r\n")
    assert versionless.startswith(b"HTTP/1.1 400 ")
    garbage = raw(host, b"\x16\x03\x01 definitely not http\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ") and b"application/json" in garbage
    assert call(host, "GET", "/healthz", token=None)[0] == 503  # still serving


def test_oversized_body_is_413_without_reading_it(host):
    small = IPCHost(write_client_file=False, limits=HostLimits(max_body_bytes=1024)).start()
    try:
        small.register_function(ARN)
        status, headers, body = call(small, "POST", BASE, b"x" * 1025)
        assert status == 413 and error_of(body)["errorType"] == "PayloadTooLarge"
        assert headers["Connection"] == "close"
        assert call(small, "POST", BASE, b"x" * 1024)[0] == 202
    finally:
        small.shutdown(grace_s=0.5)


# -- the protocol ----------------------------------------------------------------------------

def test_get_work_blocks_until_work_arrives_then_result_round_trip(host):
    poller = Background(call, host, "GET", WORK, None, None, True, 10.0)
    time.sleep(0.4)
    assert poller.is_alive(), "get_work must long-poll, not answer at once"

    status, headers, body = call(host, "POST", BASE, b"\x00payload\xff", {
        "X-Amz-Client-Context": CONTEXT, "X-Amz-Invocation-Type": "RequestResponse"})
    assert status == 202 and body == b""
    invocation_id = headers["X-Amz-InvocationId"]
    assert invocation_id

    poller.join(5)
    status, work_headers, work_body = poller.result
    assert status == 200
    assert work_body == b"\x00payload\xff"
    assert work_headers["X-Amz-InvocationId"] == invocation_id
    assert work_headers["X-Amz-Client-Context"] == CONTEXT

    waiter = Background(call, host, "GET", BASE, None, {"X-Amz-InvocationId": invocation_id})
    time.sleep(0.2)
    assert waiter.is_alive(), "get_work_result must wait for the result"
    status, _, body = call(host, "POST", WORK, b'{"Body": "ok"}', {"X-Amz-InvocationId": invocation_id})
    assert status == 200 and body == b""
    waiter.join(5)
    status, headers, body = waiter.result
    assert status == 200 and body == b'{"Body": "ok"}'
    assert "X-Amz-Function-Error" not in headers
    # Handed over once: the id is gone afterwards.
    assert call(host, "GET", BASE, headers={"X-Amz-InvocationId": invocation_id})[0] == 404


def test_handler_error_reaches_the_caller_as_handled(host):
    invocation_id = post_work(host)
    status, headers, _ = call(host, "GET", WORK)
    assert headers["X-Amz-InvocationId"] == invocation_id
    error = json.dumps({"errorMessage": "not a JPEG or PNG image"}).encode()
    status, _, _ = call(host, "POST", WORK, error, {
        "X-Amz-InvocationId": invocation_id, "X-Amz-Function-Error": "Handled"})
    assert status == 200
    status, headers, body = call(host, "GET", BASE, headers={"X-Amz-InvocationId": invocation_id})
    assert status == 200
    assert headers["X-Amz-Function-Error"] == "Handled"
    assert json.loads(body) == {"errorMessage": "not a JPEG or PNG image"}


def test_results_are_accepted_once_and_bad_function_error_values_refused(host):
    invocation_id = post_work(host)
    early = call(host, "POST", WORK, b"r", {"X-Amz-InvocationId": invocation_id})
    assert early[0] == 409 and error_of(early[2])["errorType"] == "InvocationNotDelivered"
    call(host, "GET", WORK)
    bad = call(host, "POST", WORK, b"r", {"X-Amz-InvocationId": invocation_id,
                                          "X-Amz-Function-Error": "Maybe"})
    assert bad[0] == 400
    assert call(host, "POST", WORK, b"r", {"X-Amz-InvocationId": invocation_id})[0] == 200
    again = call(host, "POST", WORK, b"r", {"X-Amz-InvocationId": invocation_id})
    assert again[0] == 409
    other_arn = protocol.function_path("arn:aws:lambda:us-east-1:aws:function:other", "work")
    assert call(host, "POST", other_arn, b"r", {"X-Amz-InvocationId": invocation_id})[0] == 404


def test_event_invocations_are_delivered_but_keep_no_result(host):
    invocation_id = post_work(host, b"event", kind="Event")
    status, _, body = call(host, "GET", BASE, headers={"X-Amz-InvocationId": invocation_id})
    assert status == 400 and error_of(body)["errorType"] == "NoResultKept"
    status, headers, body = call(host, "GET", WORK)
    assert body == b"event" and headers["X-Amz-InvocationId"] == invocation_id
    assert call(host, "POST", WORK, b"done", {"X-Amz-InvocationId": invocation_id})[0] == 200
    assert call(host, "GET", BASE, headers={"X-Amz-InvocationId": invocation_id})[0] == 404


def test_post_work_fails_fast_for_an_arn_nobody_serves(host):
    other = "arn:aws:lambda:us-east-1:aws:function:GG-ML-INF-object-detection-nobody"
    started = time.monotonic()
    status, _, body = call(host, "POST", protocol.function_path(other), b"x")
    assert time.monotonic() - started < 1.0
    assert status == 404 and error_of(body)["errorType"] == "ResourceNotFoundException"
    assert other in error_of(body)["errorMessage"]

    # A worker that attaches through get_work (a Lambda in another process) makes it served.
    poller = Background(call, host, "GET", protocol.function_path(other, "work"), None, None, True, 10.0)
    deadline = time.monotonic() + 5
    while not host.board.is_served(other) and time.monotonic() < deadline:
        time.sleep(0.02)
    invocation_id = post_work(host, b"now served", arn=other)
    poller.join(5)
    assert poller.result[2] == b"now served"
    assert poller.result[1]["X-Amz-InvocationId"] == invocation_id


def test_served_rule_registration_and_grace_period():
    with IPCHost(write_client_file=False, attach_grace_s=1.0) as h:
        lone = "arn:aws:lambda:us-east-1:aws:function:lone"
        assert not h.board.is_served(lone)
        h.register_function(lone)
        assert h.board.is_served(lone)
        h.unregister_function(lone)
        assert not h.board.is_served(lone)
        worker = Background(call, h, "GET", protocol.function_path(lone, "work"), None, None, True, 10.0)
        time.sleep(0.2)
        assert h.board.is_served(lone)  # a poll is open
        post_work(h, b"x", arn=lone)
        worker.join(5)
        assert h.board.is_served(lone)  # seen moments ago: the worker is running its handler
        time.sleep(1.2)
        assert not h.board.is_served(lone)  # gone for longer than the grace period
        assert call(h, "POST", protocol.function_path(lone), b"x")[0] == 404


def test_get_work_result_times_out_as_an_unhandled_function_error():
    with IPCHost(write_client_file=False, result_timeout_s=0.5) as h:
        h.register_function(ARN)
        invocation_id = post_work(h)
        started = time.monotonic()
        status, headers, body = call(h, "GET", BASE, headers={"X-Amz-InvocationId": invocation_id})
        assert 0.3 < time.monotonic() - started < 3.0
        assert status == 200
        assert headers["X-Amz-Function-Error"] == "Unhandled"
        error = error_of(body)
        assert error["errorType"] == "TimeoutError" and "0.5 s" in error["errorMessage"]
        # The work expired with it: no worker gets it any more, and a late result is refused.
        poller = Background(call, h, "GET", WORK, None, None, True, 3.0)
        time.sleep(0.4)
        assert poller.is_alive()
        assert call(h, "POST", WORK, b"late", {"X-Amz-InvocationId": invocation_id})[0] == 404


def test_work_is_not_lost_on_a_poller_that_hung_up(host):
    request = "GET {} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n".format(WORK, host.token)
    with socket.create_connection(("127.0.0.1", host.port), timeout=5) as sock:
        sock.sendall(request.encode())
        time.sleep(0.3)
    time.sleep(0.6)  # the host notices the closed socket within a poll slice
    invocation_id = post_work(host, b"keep me")
    status, headers, body = call(host, "GET", WORK)
    assert body == b"keep me" and headers["X-Amz-InvocationId"] == invocation_id


def test_keep_alive_connection_serves_several_requests(host):
    connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=5)
    try:
        for _ in range(3):
            connection.request("POST", BASE, body=b"k", headers={"Authorization": host.token})
            response = connection.getresponse()
            response.read()
            assert response.status == 202
    finally:
        connection.close()


def test_initialized_is_recorded_and_validated(host):
    assert host.initialization(ARN) is None
    status, _, _ = call(host, "PUT", INITIALIZED, b'{"Success": false, "Response": "no model"}')
    assert status == 200
    assert host.initialization(ARN) == {"Success": False, "Response": "no model"}
    # A function that failed to initialize is not served, and callers learn why.
    status, _, body = call(host, "POST", BASE, b"x")
    assert status == 404 and "no model" in error_of(body)["errorMessage"]
    assert call(host, "PUT", INITIALIZED, b'{"Success": true, "Response": ""}')[0] == 200
    assert call(host, "POST", BASE, b"x")[0] == 202
    for bad in (b"", b"{", b'{"Success": "yes"}', b"[]"):
        status, _, body = call(host, "PUT", INITIALIZED, bad)
        assert status == 400 and error_of(body)["errorType"] == "InvalidInitialization"


# -- health and shutdown ---------------------------------------------------------------------

def test_healthz_before_and_after_ready(host):
    status, headers, body = call(host, "GET", "/healthz", token=None)
    assert status == 503 and json.loads(body) == {"status": "starting"}
    host.set_ready()
    assert call(host, "GET", "/healthz", token=None)[:3:2] == (200, b'{"status": "ok"}')
    workers = {"status": "ok", "workers": 2}
    host.set_health(lambda: workers)
    status, headers, body = call(host, "GET", "/healthz", token=None)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"status": "ok"}  # the document needs a token
    assert json.loads(call(host, "GET", "/healthz", token=host.token)[2]) == workers

    def broken():
        raise RuntimeError("worker 1 died")
    host.set_health(broken)
    status, _, body = call(host, "GET", "/healthz", token=None)
    assert status == 500 and "worker 1" not in body.decode()  # reasons need the token
    status, _, body = call(host, "GET", "/healthz", token=host.token)
    assert status == 500 and json.loads(body)["errorMessage"] == "worker 1 died"


def test_graceful_shutdown_finishes_in_flight_and_refuses_new_work():
    h = IPCHost(write_client_file=False, result_timeout_s=10.0).start()
    h.register_function(ARN)
    h.set_ready()
    idle_poller_arn = "arn:aws:lambda:us-east-1:aws:function:idle"
    idle_poller = Background(call, h, "GET", protocol.function_path(idle_poller_arn, "work"))
    invocation_id = post_work(h, b"in flight")
    assert call(h, "GET", WORK)[1]["X-Amz-InvocationId"] == invocation_id
    waiter = Background(call, h, "GET", BASE, None, {"X-Amz-InvocationId": invocation_id}, True, 10.0)
    time.sleep(0.2)

    stopper = Background(h.shutdown, 5.0)
    time.sleep(0.3)
    assert stopper.is_alive(), "shutdown must wait for the in-flight get_work_result"
    idle_poller.join(3)
    assert idle_poller.result[0] == 503  # long polls are answered at once
    status, _, body = call(h, "POST", BASE, b"new")
    assert status == 503 and error_of(body)["errorType"] == "ServiceUnavailable"
    assert call(h, "GET", "/healthz", token=None)[0] == 503

    assert call(h, "POST", WORK, b"finished", {"X-Amz-InvocationId": invocation_id})[0] == 200
    waiter.join(5)
    assert waiter.result[0] == 200 and waiter.result[2] == b"finished"
    stopper.join(5)
    assert not stopper.is_alive() and stopper.error is None
    with pytest.raises(OSError):
        call(h, "GET", "/healthz", token=None, timeout=1.0)


def test_shutdown_grace_is_bounded_and_fails_what_is_left():
    h = IPCHost(write_client_file=False, result_timeout_s=30.0).start()
    h.register_function(ARN)
    invocation_id = post_work(h)
    waiter = Background(call, h, "GET", BASE, None, {"X-Amz-InvocationId": invocation_id}, True, 10.0)
    time.sleep(0.2)
    started = time.monotonic()
    h.shutdown(grace_s=0.5)
    assert time.monotonic() - started < 3.0
    waiter.join(3)
    status, headers, body = waiter.result
    assert status == 200 and headers["X-Amz-Function-Error"] == "Unhandled"
    assert "shut down" in error_of(body)["errorMessage"]


# -- client file -----------------------------------------------------------------------------

def test_client_file_is_private_complete_and_removed(tmp_path):
    path = str(tmp_path / "run" / "greengrass-ml" / "ipc.json")
    h = IPCHost(client_file=path, region="eu-central-1").start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        document = clientfile.read(path)
        assert document["port"] == h.port and document["token"] == h.token
        assert document["region"] == "eu-central-1" and document["host"] == "127.0.0.1"
        assert document["pid"] == os.getpid() and document["name"] == "ipc-host"
        # no temporary left behind, only the lock file of the entries' read-modify-write and
        # the fast path's socket (tests/ipc/test_fast_path.py)
        assert sorted(os.listdir(os.path.dirname(path))) == [".ipc.json.lock", "ipc.json",
                                                             "ipc.json.ipc-host.sock"]
    finally:
        h.shutdown(grace_s=0.5)
    assert not os.path.exists(path)


def test_client_file_of_another_host_is_left_alone(tmp_path):
    path = str(tmp_path / "ipc.json")
    first = IPCHost(client_file=path, name="first").start()
    second = IPCHost(client_file=path, name="second").start()
    assert clientfile.read(path, "first")["token"] == first.token
    first.shutdown(grace_s=0.5)
    assert clientfile.read(path, "second")["token"] == second.token
    assert set(clientfile.entries(path)) == {"second"}
    second.shutdown(grace_s=0.5)
    assert not os.path.exists(path)


def test_client_file_default_location(tmp_path):
    runtime_dir = tmp_path / "xdg"
    runtime_dir.mkdir()
    env = {"XDG_RUNTIME_DIR": str(runtime_dir), "HOME": str(tmp_path / "home")}
    assert clientfile.default_path(env) == str(runtime_dir / "greengrass-ml" / "ipc.json")
    assert clientfile.default_path({"HOME": "/home/u"}) == "/home/u/.config/greengrass-ml/ipc.json"
    assert clientfile.default_path({"XDG_RUNTIME_DIR": str(tmp_path / "missing"), "HOME": "/h"}) \
        == "/h/.config/greengrass-ml/ipc.json"
    assert clientfile.default_path(dict(env, GG_ML_IPC_FILE="/x/y.json")) == "/x/y.json"


def test_answers_are_sent_without_nagle_delay():
    # Headers and body leave in separate writes: with Nagle's algorithm the body waits for the
    # client's delayed ACK (~40 ms a request on a reused connection). The host's end of an open
    # keep-alive connection must have TCP_NODELAY set.
    import http.client
    import socket
    with IPCHost(write_client_file=False) as host:
        host.set_ready()
        conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().read()
        server_ends = host.guard.open_connections()
        assert server_ends and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in server_ends)
        conn.close()


def test_each_answer_leaves_in_one_write(host, monkeypatch):
    """Head and body in one write: a second write is a second segment the caller waits for."""
    import socketserver
    writes = []
    original = socketserver._SocketWriter.write

    def counted(self, data):
        writes.append(bytes(data))
        return original(self, data)

    monkeypatch.setattr(socketserver._SocketWriter, "write", counted)
    invocation_id = post_work(host, b"x" * 100000)
    status, _, work_body = call(host, "GET", WORK)
    assert status == 200 and work_body == b"x" * 100000
    call(host, "POST", WORK, b'{"Body": "ok"}', {"X-Amz-InvocationId": invocation_id})
    status, _, body = call(host, "GET", BASE, headers={"X-Amz-InvocationId": invocation_id})
    assert status == 200 and body == b'{"Body": "ok"}'
    status, _, body = call(host, "GET", "/nowhere")  # a refusal, with its JSON body
    assert status == 404 and error_of(body)
    assert len(writes) == 5, [w[:40] for w in writes]
    assert writes[1].startswith(b"HTTP/1.1 200") and writes[1].endswith(b"x" * 100000)
    assert writes[3].startswith(b"HTTP/1.1 200") and writes[3].endswith(b'{"Body": "ok"}')
    assert writes[4].startswith(b"HTTP/1.1 404") and writes[4].endswith(b"}")
