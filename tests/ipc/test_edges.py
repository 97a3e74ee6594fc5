"""The IPC host's edges, attacked by a local program holding only the callers' token: stalled
maximum-size uploads, client contexts nested thousands of levels deep, and what the health probes
tell a prober without a token. Real host, real HTTP on loopback, the real Lambda runtime."""
from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time

import pytest

from connector.ipc import IPCClient, IPCError, IPCHost, protocol, run_lambda
from connector.ipc.http.guard import (BODY_CHUNK_BYTES, READING, ConnectionGuard,
                                      DEFAULT_SMALL_BODY_BYTES)
from connector.ipc.host import DEFAULT_MAX_BODY_BYTES

ARN = protocol.inference_function_arn("us-east-1", "object-detection", "edges")
MiB = 1024 * 1024


class Serving(object):
    """run_lambda over HTTP (as against a real core) in a thread; .calls counts handler calls."""

    def __init__(self, host: IPCHost) -> None:
        self.calls = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=run_lambda, args=(ARN, self.handler,
                                                                host.client(function_arn=ARN)),
                                       kwargs={"stop_event": self.stop}, daemon=True)

    def handler(self, event: bytes, context) -> dict:
        self.calls += 1
        return {"bytes": len(event), "custom": context.client_context.custom}

    def __enter__(self) -> "Serving":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def host():
    h = IPCHost(write_client_file=False, result_timeout_s=10.0).start()
    h.register_function(ARN)
    yield h
    h.shutdown(grace_s=1.0)


def normal_call(host: IPCHost, size: int = 100_000, context: str = "") -> dict:
    client = IPCClient("127.0.0.1", host.port, host.token, timeout=10)
    out = client.get_work_result(ARN, client.post_work(ARN, b"i" * size, context))
    assert out.func_err is None, out.payload
    return json.loads(out.payload)


# -- B: stalled uploads -------------------------------------------------------------------------

class Stall(threading.Thread):
    """A post_work declaring `declared` bytes that sends `send` of them as fast as it can, then
    stalls (keeps the connection open, reading nothing) until `release`."""

    def __init__(self, host: IPCHost, declared: int, send: int, release: threading.Event) -> None:
        super().__init__(daemon=True)
        self.host, self.declared, self.send, self.release = host, declared, send, release
        self.sent = threading.Event()
        self.start()

    def run(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.host.port), timeout=30)
        try:
            sock.sendall("POST {} HTTP/1.1\r\nAuthorization: {}\r\nContent-Length: {}\r\n"
                         "X-Amz-Invocation-Type: Event\r\n\r\n".format(
                             protocol.function_path(ARN), self.host.token, self.declared).encode())
            chunk = b"\0" * MiB
            left = self.send
            try:
                while left > 0:
                    sock.sendall(chunk[:min(left, len(chunk))])
                    left -= min(left, len(chunk))
            except OSError:
                pass  # refused part-way (429) and hung up on: that is one of the outcomes
            self.sent.set()
            self.release.wait(60)
            sock.settimeout(0.5)  # a refusal is there by now; an admitted stall gets no answer
            try:
                self.answer = sock.recv(4096)
            except OSError:
                pass
        finally:
            sock.close()

    answer = b""

    @property
    def refused(self) -> bool:
        return self.answer.startswith(b"HTTP/1.1 429 ") and b"busy" in self.answer


def settled(host: IPCHost, stalls: "list[Stall]") -> None:
    """Wait until every stall has sent what it could and the host's charge holds still."""
    for stall in stalls:
        assert stall.sent.wait(60)
    last, deadline = None, time.monotonic() + 30
    while time.monotonic() < deadline:
        now = (host.guard.describe()["reading_bytes"],
               sum(1 for e in list(host.guard._entries.values()) if e.phase == READING))
        if now == last:
            return
        last = now
        time.sleep(0.3)
    raise AssertionError("the stalls never settled")


@pytest.mark.parametrize("count,send", [(4, 0), (40, 0), (4, DEFAULT_MAX_BODY_BYTES - 1),
                                        (40, 2 * MiB)],
                         ids=["4-silent", "40-silent", "4-fast-then-stalled", "40-fast-then-stalled"])
def test_stalled_maximum_size_uploads_leave_a_normal_call_succeeding(host, count, send):
    """Each stall declares the maximum body (16 MiB). Before, the declared length was reserved
    from the 64 MiB budget, so four of them answered every other call 429 for 30 s."""
    release = threading.Event()
    with Serving(host) as serving:
        stalls = [Stall(host, DEFAULT_MAX_BODY_BYTES, send, release) for _ in range(count)]
        try:
            settled(host, stalls)
            held = host.guard.describe()["reading_bytes"]
            assert normal_call(host)["bytes"] == 100_000
            assert normal_call(host, DEFAULT_SMALL_BODY_BYTES)["bytes"] == DEFAULT_SMALL_BODY_BYTES
            assert serving.calls == 2
            # bytes held are what arrived (and one pending chunk each), never what was declared
            assert held <= host.guard.large_reading_bytes, held
            if send == 0:
                assert held <= count * BODY_CHUNK_BYTES, held
        finally:
            release.set()
        for stall in stalls:
            stall.join(30)
    # what fits the pool is held, a chunk that does not fit is refused (429) at once: with
    # 4 x 16 MiB, one; with 40 x 2 MiB, all beyond 48 MiB
    refused = sum(stall.refused for stall in stalls)
    fit = host.guard.large_reading_bytes // (min(send + BODY_CHUNK_BYTES, DEFAULT_MAX_BODY_BYTES) or 1)
    assert refused >= count - fit if send else refused == 0, (refused, fit)
    deadline = time.monotonic() + 10
    while host.guard.describe()["reading_bytes"] != 0:  # everything is given back once they are gone
        assert time.monotonic() < deadline, host.guard.describe()["reading_bytes"]
        time.sleep(0.05)


def test_bodies_are_charged_as_they_arrive_with_a_reserve_for_small_ones():
    guard = ConnectionGuard(max_reading_bytes=64 * MiB, largest_body_bytes=16 * MiB)
    assert guard.max_reading_bytes == 64 * MiB and guard.large_reading_bytes == 48 * MiB
    assert guard.charge(48 * MiB, small=False)
    assert not guard.charge(1, small=False)  # large bodies stop at 48 MiB
    assert guard.charge(16 * MiB, small=True)  # small ones may use the reserve
    assert not guard.charge(1, small=True)  # and the budget is still the ceiling
    guard.uncharge(64 * MiB)
    assert guard.describe()["reading_bytes"] == 0
    # a budget below the largest body plus the reserve grows, or large bodies could never fit
    guard = ConnectionGuard(max_reading_bytes=16 * MiB, largest_body_bytes=16 * MiB)
    assert guard.large_reading_bytes >= 16 * MiB


# -- C: client contexts --------------------------------------------------------------------------

def context_of(document: bytes) -> str:
    return base64.b64encode(document).decode("ascii")


def nested(depth: int) -> bytes:
    return b'{"custom": {"Content-Type": "image/png"}, "deep": ' + b"[" * (depth - 1) \
        + b"]" * (depth - 1) + b"}"


DEEP = context_of(nested(20_000))


def test_a_deeply_nested_client_context_is_refused_at_once_and_never_reaches_the_function(host):
    with Serving(host) as serving:
        client = IPCClient("127.0.0.1", host.port, host.token, timeout=5)
        with pytest.raises(IPCError) as refused:
            client.post_work(ARN, b"x", DEEP)
        assert refused.value.status == 400 and refused.value.error_type == "InvalidClientContext"
        assert "nested deeper than {}".format(protocol.MAX_CLIENT_CONTEXT_DEPTH) in str(refused.value)
        assert host.board.pending_count() == 0
        # the service goes on: the next call is served, its context intact
        context = protocol.encode_client_context({"Content-Type": "image/png"})
        assert normal_call(host, 10, context)["custom"] == {"Content-Type": "image/png"}
        assert serving.calls == 1


def test_client_contexts_the_sdks_send_keep_working_and_bad_ones_get_a_clear_400(host):
    limit = protocol.MAX_CLIENT_CONTEXT_DEPTH
    good = {
        "ours": protocol.encode_client_context({"Content-Type": "image/jpeg", "Accept": "application/json"}),
        # greengrasssdk's IoT publish through GGRouter, and Lambda.invoke with a user's context
        "router": protocol.encode_client_context({"source": ARN, "subject": "t/1", "queueFullPolicy": ""}),
        "invoke": context_of(json.dumps({"custom": {"a": 1}, "client": {"id": "c"},
                                         "env": {"e": "1"}}).encode()),
        "feedback": protocol.encode_client_context({"ConfigId": "cfg", "Metadata": {"k": "v"},
                                                    "ModelPrediction": [[0, 0.9, 0.1, 0.1, 0.5, 0.5]] * 100}),
        "at-the-limit": context_of(nested(limit)),
        "brackets-in-strings": context_of(b'{"custom": {"x": "' + b"[{" * 5000 + b'"}}'),
        "escaped-quotes": context_of(b'{"custom": {"x": "\\\\\\"' + b"[" * 100 + b'"}}'),
        "none": "",
    }
    with Serving(host) as serving:
        for name, context in good.items():
            normal_call(host, 10, context)
        assert serving.calls == len(good)
        bad = {"over-the-limit": (context_of(nested(limit + 1)), "nested deeper"),
               "not-base64": ("not base64!", "base64"),
               "not-json": (context_of(b"not json"), "JSON"),
               "json-not-object": (context_of(b"[1, 2]"), "not an object"),
               "unbalanced": (context_of(b"{" * 5000), "nested deeper")}
        for name, (context, says) in bad.items():
            client = IPCClient("127.0.0.1", host.port, host.token, timeout=5)
            with pytest.raises(IPCError) as refused:
                client.post_work(ARN, b"x", context)
            assert refused.value.status == 400, name
            assert refused.value.error_type == "InvalidClientContext", name
            assert says in str(refused.value), (name, str(refused.value))
        assert serving.calls == len(good)


def test_the_size_cap_is_checked_before_decoding():
    with pytest.raises(ValueError, match="over the limit of {}".format(protocol.MAX_CLIENT_CONTEXT_BYTES)):
        protocol.decode_client_context("A" * (protocol.MAX_CLIENT_CONTEXT_BYTES + 4))


def test_the_runtime_turns_a_too_deep_context_into_a_handled_error(host):
    """A real core passes the context through unchecked: the runtime must answer with the
    InvalidClientContext error, not die on a RecursionError and leave the caller to time out."""
    with Serving(host) as serving:
        # straight onto the board: what a core that does not check the context would hand over
        invocation = host.board.submit(ARN, b"x", DEEP, protocol.INVOCATION_REQUEST_RESPONSE, "caller")
        done = host.board.wait_result(ARN, invocation.invocation_id, "caller")
        assert done.function_error == protocol.FUNCTION_ERROR_HANDLED, done.result
        error = json.loads(done.result)
        assert error["errorType"] == "InvalidClientContext"
        assert "nested deeper" in error["errorMessage"]
        assert serving.calls == 0
        assert normal_call(host, 10)["bytes"] == 10  # the worker is alive


# -- E: health without a token --------------------------------------------------------------------

def get(host: IPCHost, path: str, token=None) -> "tuple[int, dict]":
    connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=5)
    try:
        connection.request("GET", path, headers={"Authorization": token} if token else {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_probes_without_a_token_carry_the_status_only(host):
    document = {"state": "ready", "function_arn": ARN, "model": "model-id", "worker_pid": 4242,
                "worker": "ready", "feedback": {"delivered": 3}}
    host.set_health(lambda: dict(document))
    host.set_ready()
    assert get(host, "/healthz") == (200, {"status": "ok"})
    assert get(host, "/healthz", "wrong-token") == (200, {"status": "ok"})
    assert get(host, "/livez") == (200, {"status": "alive"})
    assert get(host, "/readyz") == (200, {"status": "ready"})
    assert get(host, "/healthz", host.token) == (200, document)
    assert get(host, "/healthz", "Bearer " + host.token) == (200, document)

    def broken():
        raise RuntimeError("model /secret/path failed")
    host.set_health(broken)
    assert get(host, "/healthz") == (500, {"status": "error"})
    status, detailed = get(host, "/healthz", host.token)
    assert status == 500 and "/secret/path" in detailed["errorMessage"]


def _put_initialized(host: IPCHost, token: str, body: bytes) -> "tuple[int, dict]":
    connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=10)
    try:
        connection.request("PUT", protocol.function_path(ARN, protocol.ENDPOINT_INITIALIZED), body=body,
                           headers={"Authorization": token})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_a_deep_or_huge_initialization_report_is_refused_or_kept_short(caplog):
    """A function's own token may report its initialization: a body nested deeper than the
    interpreter's stack is a 400 naming the rule (not a 500 with a traceback in the log), and
    the Response callers and /healthz are shown is kept to its start."""
    with IPCHost(write_client_file=False) as host:
        token = host.register_function(ARN, served=False)
        with caplog.at_level("ERROR"):
            status, document = _put_initialized(host, token, b"[" * 100000)
        assert status == 400 and document.get("errorType") == "InvalidInitialization", document
        assert "nested at most 32 levels" in document["errorMessage"]
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        status, _ = _put_initialized(host, token, json.dumps(
            {"Success": False, "Response": "x" * 1000000}).encode())
        assert status == 200
        response = host.board.initialization(ARN)["Response"]
        assert len(response) < 1100 and response.endswith("(999000 more characters)"), response[-60:]
        status, _ = _put_initialized(host, token, json.dumps(
            {"Success": True, "Response": {"a": [[1]]}}).encode())
        assert status == 200 and host.board.initialization(ARN)["Response"] == '{"a": [[1]]}'
