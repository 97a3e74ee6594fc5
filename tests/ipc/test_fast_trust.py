"""The fast path is no way around the rules (issue 20, point 4): each rule of SPEC section 4's "Who
may do what" and each bound of docs/limits.md, on both transports, over real sockets."""
from __future__ import annotations

import base64
import http.client
import json
import threading
import time

import pytest

from connector.ipc import IPCClient, IPCError, IPCHost, protocol, run_lambda
from connector.ipc.fast import frames
from connector.ipc.host import HostLimits
from connector.ipc.invocations import NotAdmitted
from connector.ipc.local import BoardClient
from tests.fast_client import CONTEXT, FastConnection, error_of
from tests.ipc.helpers import closed_within

REGION = "us-east-1"
ARN = protocol.inference_function_arn(REGION, "object-detection", "trust")
OTHER = "arn:aws:lambda:us-east-1:123456789012:function:other"


class Rig(object):
    """A host with a client file, ARN served in-process by `handler` (None: registered, served,
    but nobody takes its work)."""

    def __init__(self, tmp_path, handler=None, concurrency=2, **limits):
        self.host = IPCHost(client_file=str(tmp_path / "ipc.json"), region=REGION, name="trust",
                            result_timeout_s=10.0, limits=HostLimits(**limits)).start()
        self.host.board.poll_slice_s = 0.02
        self.host.register_function(ARN)
        self.host.set_ready()
        self.stop = threading.Event()
        self.loop = None
        if handler is not None:
            self.loop = threading.Thread(target=run_lambda, args=(ARN, handler, BoardClient(self.host.board)),
                                         kwargs={"stop_event": self.stop, "concurrency": concurrency},
                                         daemon=True)
            self.loop.start()

    def fast(self, timeout=10.0):
        return FastConnection(self.host.fast_path, timeout)

    def close(self):
        self.stop.set()
        self.host.shutdown(grace_s=0.5)
        if self.loop is not None:
            self.loop.join(5)


@pytest.fixture
def rig(tmp_path):
    made = []

    def start(handler=lambda event, context: event, **kwargs):
        made.append(Rig(tmp_path, handler, **kwargs))
        return made[-1]

    yield start
    for r in made:
        r.close()


def v1_post(host, token, payload=b"x", headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=10)
    try:
        all_headers = {protocol.HEADER_CLIENT_CONTEXT: CONTEXT.decode()}
        if token is not None:
            all_headers["Authorization"] = token
        all_headers.update(headers or {})
        connection.request("POST", protocol.function_path(ARN), body=payload, headers=all_headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# -- who may do what ----------------------------------------------------------------------------

def test_a_missing_or_wrong_token_is_refused_alike_on_both_paths(rig):
    r = rig()
    for token, status in (("", 401), ("not-a-token-of-this-host", 403)):
        v1_status, v1_body = v1_post(r.host, token or None)
        with r.fast() as connection:
            answer = connection.invoke(token, ARN)
        assert (answer.call, answer.status) == (frames.CALL_POST_WORK, status) == (1, v1_status)
        assert answer.payload == v1_body  # the same errorMessage and errorType
        assert answer.flags == frames.FLAG_CLOSING  # the payload was left unread
    assert r.host.board.pending_count() == 0


def test_the_function_only_operations_do_not_exist_on_the_fast_path(rig):
    r = rig(handler=None)  # work waits, untaken, for a get_work that never comes
    caller = r.host.client(timeout=5)
    invocation_id = caller.post_work(ARN, b"a caller's image")
    fn_token = r.host.function_token(ARN)
    for operation in [0] + list(range(2, 256)):
        with r.fast() as connection:  # the function's own token changes nothing here
            answer = connection.invoke(fn_token, ARN, b"", operation=operation)
            assert (answer.call, answer.status, answer.error_type) == (
                frames.CALL_FRAME, 400, "UnknownOperation")
            assert "only invoke" in error_of(answer)["errorMessage"]
            assert connection.closed()
    # nothing was taken, answered or reported: the caller's work still waits for its function
    assert r.host.board.queue_depth(ARN) == 1 and r.host.initialization(ARN) is None
    worker = r.host.client(timeout=5, function_arn=ARN)
    work = worker.get_work(ARN)
    assert work.invocation_id == invocation_id and work.payload == b"a caller's image"


def test_another_principals_invocation_is_out_of_reach_on_both_paths(rig):
    """An invocation belongs to the principal that posted it. The V1 exchange answers another's
    GET 404; the fast path has no field that could name an invocation at all: each frame is its
    own post_work and the get_work_result of that very invocation."""
    seen = []
    r = rig(handler=lambda event, context: seen.append(event) or event, concurrency=4)
    fn_token = r.host.register_function(OTHER)  # a function's token, used as a caller
    caller = r.host.client(timeout=5)
    invocation_id = caller.post_work(ARN, b"mine")
    with pytest.raises(IPCError) as refused:
        r.host.client(timeout=5, function_arn=OTHER).get_work_result(ARN, invocation_id)
    assert refused.value.status == 404
    # Callers and a function calling as a caller, at once, each get their own answer back.
    answers, threads = {}, []

    def call(token, payload):
        with r.fast() as connection:
            for _ in range(20):
                answers.setdefault(payload, set()).add(connection.invoke(token, ARN, payload).payload)

    for token, payload in ((r.host.token, b"caller-a"), (r.host.token, b"caller-b"), (fn_token, b"fn")):
        threads.append(threading.Thread(target=call, args=(token, payload)))
        threads[-1].start()
    for thread in threads:
        thread.join(30)
    assert answers == {b"caller-a": {b"caller-a"}, b"caller-b": {b"caller-b"}, b"fn": {b"fn"}}
    assert caller.get_work_result(ARN, invocation_id).payload == b"mine"  # still its owner's


def test_the_principal_comes_from_the_token_on_both_paths(rig):
    """A function's token used as a caller is that function to admission hooks (GGRouter's
    rules), and the callers' token a caller, whatever the client context claims."""
    seen = []

    def admit(principal, client_context, payload):
        seen.append(principal.function_arn)
        if principal.function_arn is None:
            raise NotAdmitted("callers may not post here (rule: functions only)", 403, "CallersRefused")

    r = rig()
    r.host.register_function(ARN, admit=admit)
    fn_token = r.host.register_function(OTHER)
    forged = base64.b64encode(json.dumps({"custom": {"source": OTHER}}).encode())
    with r.fast() as connection:
        refused = connection.invoke(r.host.token, ARN, b"x", context=forged)
        allowed = connection.invoke(fn_token, ARN, b"y", context=forged)
    status, body = v1_post(r.host, r.host.token, headers={protocol.HEADER_CLIENT_CONTEXT: forged.decode()})
    assert (refused.status, refused.error_type) == (403, "CallersRefused") and refused.payload == body
    assert status == 403
    assert allowed.status == 200 and allowed.payload == b"y"
    assert seen == [None, OTHER, None]


def test_a_failing_admission_hook_costs_one_call_not_the_host(rig):
    def broken(principal, context, payload):
        raise KeyError("a bug in the hook")

    r = rig()
    r.host.register_function(ARN, admit=broken)
    with r.fast() as connection:
        answer = connection.invoke(r.host.token, ARN)
        assert (answer.call, answer.status, answer.error_type) == (1, 500, "InternalError")
        assert answer.payload == v1_post(r.host, r.host.token)[1]  # as HTTP answers it
        assert connection.closed()
    r.host.register_function(ARN, admit=lambda principal, context, payload: None)
    with r.fast() as connection:  # the host serves the next call
        assert connection.invoke(r.host.token, ARN, b"next").payload == b"next"


# -- the bounds ---------------------------------------------------------------------------------

def test_the_connection_cap_counts_both_transports(rig):
    release = threading.Event()
    r = rig(handler=lambda event, context: release.wait(10) and event, concurrency=4,
            max_connections=4, head_timeout_s=30)
    idle = [r.fast() for _ in range(4)]  # four kept fast connections waiting for a next frame
    release.set()
    for connection in idle:
        assert connection.invoke(r.host.token, ARN).status == 200
    release.clear()
    time.sleep(0.2)
    assert r.host.guard.describe()["open"] == 4
    status, _ = v1_post(r.host, r.host.token)  # an HTTP call evicts the oldest idle one
    assert status == 202 and r.host.guard.counters["evicted"] >= 1
    assert idle[0].closed()
    for connection in idle:
        connection.close()
    deadline = time.monotonic() + 10
    while r.host.guard.describe()["open"] and time.monotonic() < deadline:
        time.sleep(0.02)
    busy, threads = [r.fast() for _ in range(4)], []
    for connection in busy:  # four calls in flight: no connection is idle
        threads.append(threading.Thread(target=connection.invoke, args=(r.host.token, ARN)))
        threads[-1].start()
    while r.host.board.pending_count() < 5 and time.monotonic() < deadline:  # the HTTP one too
        time.sleep(0.02)
    try:
        with r.fast() as late:  # a fifth, fast: busy at once, as HTTP says it
            answer = late.invoke(r.host.token, ARN)
        assert (answer.call, answer.status, answer.error_type) == (frames.CALL_POST_WORK, 503,
                                                                   "ServiceUnavailable")
        assert "4 connections are open and none is idle" in error_of(answer)["errorMessage"]
        with pytest.raises(IPCError) as refused:  # and the HTTP one too: one cap
            IPCClient("127.0.0.1", r.host.port, r.host.token, timeout=5).post_work(ARN, b"x")
        assert refused.value.status == 503 and "none is idle" in str(refused.value)
        assert r.host.guard.counters["refused_busy"] == 2
    finally:
        release.set()
        for thread in threads:
            thread.join(10)
        for connection in busy:
            connection.close()


def test_the_frame_header_has_a_whole_deadline_not_an_idle_timer(rig):
    r = rig(head_timeout_s=1.0)
    with r.fast() as connection:
        connection.sock.sendall(frames.REQUEST_MAGIC)
        assert closed_within(connection.sock, 10, trickle=b"\0") < 5  # a byte every 0.3 s gains nothing
    assert r.host.guard.counters["head_timeouts"] == 1


def test_a_kept_connection_may_idle_only_so_long(rig):
    r = rig(idle_timeout_s=1.0)
    with r.fast() as connection:
        assert connection.invoke(r.host.token, ARN).status == 200
        assert closed_within(connection.sock, 10) < 5  # the guard's idle deadline or the socket's timeout
    assert r.host.guard.describe()["open"] == 0


def test_the_rest_of_the_frame_has_the_body_deadline(rig):
    r = rig(body_timeout_s=1.0, head_timeout_s=30)
    frame = frames.request(r.host.token.encode(), ARN.encode(), CONTEXT, b"p" * 1000)
    with r.fast() as connection:
        connection.sock.sendall(frame[:-990])  # the header, the fields, 10 bytes of the payload
        assert closed_within(connection.sock, 10) < 5
    assert r.host.guard.counters["body_timeouts"] == 1
    assert r.host.board.pending_count() == 0


def test_frames_share_the_body_budget_with_http_bodies(rig):
    r = rig(max_body_bytes=1000, max_reading_bytes=1500, body_timeout_s=30)
    stalled = r.fast()
    stalled.sock.sendall(frames.request(r.host.token.encode(), ARN.encode(), CONTEXT, b"s" * 1000)[:-1000])
    deadline = time.monotonic() + 10
    while r.host.guard.describe()["reading_bytes"] < 1000 and time.monotonic() < deadline:
        time.sleep(0.01)  # until its 1000 bytes are charged; it sends no more
    try:
        with r.fast() as connection:
            answer = connection.invoke(r.host.token, ARN, b"y" * 900)
        assert (answer.status, answer.error_type) == (429, "TooManyRequestsException")
        assert "busy receiving other bodies" in error_of(answer)["errorMessage"]
        assert v1_post(r.host, r.host.token, b"y" * 900)[0] == 429  # one budget for both
        with r.fast() as connection:
            assert connection.invoke(r.host.token, ARN, b"z" * 300).status == 200  # what still fits
    finally:
        stalled.close()
    while r.host.guard.describe()["reading_bytes"] and time.monotonic() < deadline:
        time.sleep(0.01)
    with r.fast() as connection:
        assert connection.invoke(r.host.token, ARN, b"y" * 900).status == 200  # released


def test_a_payload_over_the_body_limit_is_refused_from_the_header(rig):
    r = rig(max_body_bytes=1000)
    frame = frames.request(r.host.token.encode(), ARN.encode(), CONTEXT, b"b" * 1001)
    with r.fast() as connection:
        connection.sock.sendall(frame[:-1001])  # the payload is never sent: it is not awaited
        answer = connection.answer()
        assert (answer.call, answer.status, answer.error_type) == (1, 413, "PayloadTooLarge")
        assert error_of(answer)["errorMessage"] == "body of 1001 bytes is over the limit of 1000 bytes"
        assert answer.flags == frames.FLAG_CLOSING and connection.closed()
    with r.fast() as connection:
        assert connection.invoke(r.host.token, ARN, b"b" * 1000).status == 200


def test_the_client_context_has_the_v1_bounds(rig):
    seen = []
    r = rig(handler=lambda event, context: seen.append(event) or event)
    deep = base64.b64encode(("[" * 33 + "]" * 33).encode())
    cases = {deep: "nested deeper than 32", b"not base64!": "not base64 of a JSON object",
             base64.b64encode(b"[1]"): "JSON but not an object",
             b"A" * (protocol.MAX_CLIENT_CONTEXT_BYTES + 1): "over the limit of 65536"}
    for context, words in cases.items():
        with r.fast() as connection:
            answer = connection.invoke(r.host.token, ARN, b"never", context=context)
        assert (answer.call, answer.status, answer.error_type) == (1, 400, "InvalidClientContext")
        assert words in error_of(answer)["errorMessage"]
        if len(context) <= protocol.MAX_CLIENT_CONTEXT_BYTES:  # what HTTP can carry: the same words
            assert v1_post(r.host, r.host.token, headers={
                protocol.HEADER_CLIENT_CONTEXT: context.decode()})[1] == answer.payload
    with r.fast() as connection:
        assert connection.invoke(r.host.token, ARN, b"ok").status == 200
    assert seen == [b"ok"]  # no refused context reached the function


def test_the_token_and_arn_are_capped_before_they_are_read(rig):
    r = rig()
    for token, arn, words in ((b"t" * 4097, ARN.encode(), "the token is 4097 bytes"),
                              (r.host.token.encode(), b"a" * 4097, "the function ARN is 4097 bytes")):
        with r.fast() as connection:
            connection.sock.sendall(frames.request(token, arn, CONTEXT, b"")[:frames.REQUEST_HEADER.size])
            answer = connection.answer()
            assert (answer.call, answer.status, answer.error_type) == (0, 400, "FieldTooLarge")
            assert words in error_of(answer)["errorMessage"]


def test_the_queue_bound_answers_busy_on_the_fast_path(rig):
    release = threading.Event()
    r = rig(handler=lambda event, context: release.wait(10) and event, concurrency=1,
            max_queued=1, max_queued_bytes=10_000, max_body_bytes=5_000)
    first = r.fast()
    waiting = threading.Thread(target=first.invoke, args=(r.host.token, ARN))
    waiting.start()
    deadline = time.monotonic() + 10
    while r.host.board.pending_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        with r.fast() as connection:
            answer = connection.invoke(r.host.token, ARN)
        assert (answer.status, answer.error_type) == (429, "TooManyRequestsException")
        assert "retry later" in error_of(answer)["errorMessage"]
    finally:
        release.set()
        waiting.join(10)
        first.close()


def test_a_starting_function_is_answered_retry_after(rig):
    r = rig()
    r.host.board.starting(ARN, "its model m is loading")
    with r.fast() as connection:
        answer = connection.invoke(r.host.token, ARN)
        assert (answer.call, answer.status, answer.error_type, answer.retry_after) == (
            1, 503, "ServiceStarting", "1")
        assert answer.flags == 0  # read whole: the caller may retry on the same connection
        r.host.register_function(ARN)
        assert connection.invoke(r.host.token, ARN, b"now").payload == b"now"


def test_a_caller_that_hangs_up_abandons_its_work(rig):
    r = rig(handler=None)
    connection = r.fast()
    connection.sock.sendall(frames.request(r.host.token.encode(), ARN.encode(), CONTEXT, b"gone"))
    deadline = time.monotonic() + 10
    while r.host.board.pending_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    connection.close()
    while r.host.board.counters(ARN)["abandoned"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert r.host.board.counters(ARN)["abandoned"] == 1 and r.host.board.pending_count() == 0


def test_graceful_shutdown_finishes_calls_in_flight_and_answers_new_ones_draining(rig):
    release = threading.Event()
    r = rig(handler=lambda event, context: release.wait(10) and event)
    first, answers = r.fast(), []
    in_flight = threading.Thread(target=lambda: answers.append(first.invoke(r.host.token, ARN, b"mine")))
    in_flight.start()
    deadline = time.monotonic() + 10
    while r.host.board.pending_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    late = r.fast()
    stopping = threading.Thread(target=r.host.shutdown, kwargs={"grace_s": 5.0})
    stopping.start()
    while not r.host.board.draining and time.monotonic() < deadline:
        time.sleep(0.01)
    answer = late.invoke(r.host.token, ARN, b"new")
    assert (answer.call, answer.status, answer.error_type) == (1, 503, "ServiceUnavailable")
    assert "shutting down" in error_of(answer)["errorMessage"]
    release.set()
    in_flight.join(10)
    stopping.join(10)
    assert answers[0].status == 200 and answers[0].payload == b"mine"
    first.close()
    late.close()
