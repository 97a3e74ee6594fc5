"""The host runs an in-process function's work in the posting request's own thread (no hand-off
to a worker thread and back), over real HTTP on loopback, with every guarantee of the queue path:
the concurrency limit, FIFO order, the busy answer, deadlines, callers that leave, ownership of
results and a graceful shutdown."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from connector.ipc import protocol, run_lambda
from connector.ipc.host import IPCHost
from connector.ipc.workboard import WorkBoard

ARN = "arn:aws:lambda:us-east-1:123456789012:function:inline-test"
OTHER_ARN = "arn:aws:lambda:us-east-1:123456789012:function:another-function"
BASE = protocol.function_path(ARN)
WAIT_S = 10.0


class Caller(object):
    """One keep-alive connection, used as the SDK uses it: POST, then GET on the same socket."""

    def __init__(self, host: IPCHost, token: str = None) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=WAIT_S * 2)
        self.token = token or host.token

    def post(self, payload: bytes, kind: str = "RequestResponse"):
        self.connection.request("POST", BASE, body=payload, headers={
            "Authorization": self.token, protocol.HEADER_INVOCATION_TYPE: kind})
        response = self.connection.getresponse()
        response.read()
        return response.status, response.headers.get(protocol.HEADER_INVOCATION_ID)

    def get(self, invocation_id: str):
        self.connection.request("GET", BASE, headers={
            "Authorization": self.token, protocol.HEADER_INVOCATION_ID: invocation_id})
        response = self.connection.getresponse()
        return response.status, response.headers.get(protocol.HEADER_FUNCTION_ERROR), response.read()

    def invoke(self, payload: bytes):
        status, invocation_id = self.post(payload)
        assert status == 202
        return self.get(invocation_id)

    def close(self) -> None:
        self.connection.close()


class Served(object):
    """A host serving ARN in-process with run_lambda(concurrency) and `handler`."""

    def __init__(self, handler, concurrency: int = 1, **host_options) -> None:
        options = dict(write_client_file=False, result_timeout_s=WAIT_S)
        options.update(host_options)
        self.host = IPCHost(**options).start()
        self.host.register_function(ARN)
        self.stop = threading.Event()
        self.loop = threading.Thread(target=run_lambda, args=(ARN, handler, self.host.function_client(ARN)),
                                     kwargs={"stop_event": self.stop, "concurrency": concurrency})
        self.loop.start()

    def close(self) -> None:
        self.host.shutdown(grace_s=1.0)
        self.stop.set()
        self.loop.join(WAIT_S)
        assert not self.loop.is_alive()


@pytest.fixture
def served():
    made = []

    def make(handler, concurrency=1, **host_options):
        made.append(Served(handler, concurrency, **host_options))
        return made[-1]
    yield make
    for each in made:
        each.close()


def wait_until(condition, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_handler_runs_in_the_thread_that_serves_the_callers_connection(served):
    threads = []

    def handler(event, context):
        threads.append(threading.current_thread().name)
        return {"echo": event.decode()}

    s = served(handler, concurrency=2)
    caller = Caller(s.host)
    try:
        answers = [caller.invoke("request {}".format(i).encode()) for i in range(20)]
    finally:
        caller.close()
    assert answers == [(200, None, json.dumps({"echo": "request {}".format(i)}).encode())
                       for i in range(20)]
    # One connection is served by one host thread; no worker thread (lambda-*) ran any of them.
    assert len(set(threads)) == 1 and not threads[0].startswith("lambda-"), threads


def test_event_invocations_and_separate_connections_still_work(served):
    threads = []
    seen = threading.Event()

    def handler(event, context):
        threads.append((event, threading.current_thread().name))
        if event == b"event":
            seen.set()
        return event

    s = served(handler)
    caller = Caller(s.host)
    try:
        assert caller.post(b"event", kind="Event")[0] == 202
        assert seen.wait(WAIT_S)
    finally:
        caller.close()
    # The IPC client opens a connection per call: the post's thread runs it, the get waits.
    client = s.host.client(timeout=WAIT_S)
    invocation_id = client.post_work(ARN, b"separate")
    assert client.get_work_result(ARN, invocation_id) == (b"separate", None)
    names = dict(threads)
    assert names[b"event"].startswith("lambda-")  # nobody waits for an Event: a worker runs it
    assert not names[b"separate"].startswith("lambda-")


def test_concurrency_never_exceeds_the_limit_and_every_caller_gets_its_own_answer(served):
    running, most = [0], [0]
    lock = threading.Lock()

    def handler(event, context):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return event

    s = served(handler, concurrency=2)
    wrong = []

    def client(index):
        caller = Caller(s.host)
        try:
            for n in range(6):
                payload = "{}-{}".format(index, n).encode()
                if n % 2:  # also the connection-per-call path (the post's thread waits too)
                    ipc = s.host.client(timeout=WAIT_S * 2)
                    answer = ipc.get_work_result(ARN, ipc.post_work(ARN, payload))
                    if answer != (payload, None):
                        wrong.append((payload, answer))
                elif caller.invoke(payload) != (200, None, payload):
                    wrong.append(payload)
        finally:
            caller.close()

    clients = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(WAIT_S * 6)
    assert not wrong
    assert most[0] == 2  # reached, never exceeded


def test_queued_work_runs_in_posting_order_behind_an_inline_run(served):
    release = threading.Event()
    order = []

    def handler(event, context):
        order.append(event)
        if event == b"first":
            release.wait(WAIT_S)
        return event

    s = served(handler, concurrency=1)
    first = Caller(s.host)
    status, first_id = first.post(b"first")  # claimed and running in the host's thread
    assert status == 202
    wait_until(lambda: order == [b"first"])
    callers = [Caller(s.host) for _ in range(5)]
    ids = []
    for index, caller in enumerate(callers):
        status, invocation_id = caller.post(str(index).encode())
        assert status == 202
        ids.append(invocation_id)
    assert s.host.board.queue_depth(ARN) == 5  # the one slot is taken: nothing else started
    release.set()
    assert first.get(first_id) == (200, None, b"first")
    for index, (caller, invocation_id) in enumerate(zip(callers, ids)):
        assert caller.get(invocation_id) == (200, None, str(index).encode())
        caller.close()
    first.close()
    assert order == [b"first"] + [str(i).encode() for i in range(5)]


def test_busy_answer_at_the_queue_bound_counts_the_inline_run(served):
    release = threading.Event()

    def handler(event, context):
        release.wait(WAIT_S)
        return event

    s = served(handler, concurrency=1, max_queued=2)
    running, queued, refused = Caller(s.host), Caller(s.host), Caller(s.host)
    try:
        status, running_id = running.post(b"a")
        assert status == 202
        status, queued_id = queued.post(b"b")
        assert status == 202
        refused.connection.request("POST", BASE, body=b"c", headers={"Authorization": s.host.token})
        response = refused.connection.getresponse()
        assert response.status == 429
        assert json.loads(response.read())["errorType"] == "TooManyRequestsException"
        release.set()
        assert running.get(running_id) == (200, None, b"a")
        assert queued.get(queued_id) == (200, None, b"b")
    finally:
        release.set()
        for caller in (running, queued, refused):
            caller.close()
    assert s.host.board.counters(ARN)["busy"] == 1


def test_a_caller_that_leaves_during_its_inline_run_cancels_it(served):
    outcome = {}

    def handler(event, context):
        deadline = time.monotonic() + WAIT_S
        while not context.cancelled() and time.monotonic() < deadline:
            time.sleep(0.01)
        outcome["cancelled"] = context.cancelled()
        return event

    s = served(handler)
    caller = Caller(s.host)
    status, invocation_id = caller.post(b"leaving")
    assert status == 202
    # Asks for its result on the same connection, then gives up (a timeout, a killed process).
    caller.connection.putrequest("GET", BASE)
    caller.connection.putheader("Authorization", s.host.token)
    caller.connection.putheader(protocol.HEADER_INVOCATION_ID, invocation_id)
    caller.connection.endheaders()
    caller.close()
    wait_until(lambda: "cancelled" in outcome)
    assert outcome["cancelled"] is True
    wait_until(lambda: s.host.board.counters(ARN)["abandoned"] == 1)


def test_a_caller_that_fetches_on_another_connection_is_not_taken_for_gone(served):
    release = threading.Event()

    def handler(event, context):
        release.wait(WAIT_S)
        return b"cancelled" if context.cancelled() else b"answer"

    s = served(handler)
    poster = Caller(s.host)
    status, invocation_id = poster.post(b"x")
    assert status == 202
    poster.close()  # as an IPC client that opens a connection per call does
    time.sleep(0.3)  # the inline run sees the closed connection meanwhile
    fetcher = Caller(s.host)
    try:
        answers = []
        waiting = threading.Thread(target=lambda: answers.append(fetcher.get(invocation_id)))
        waiting.start()
        time.sleep(0.2)
        release.set()
        waiting.join(WAIT_S)
    finally:
        fetcher.close()
    assert answers == [(200, None, b"answer")]
    assert s.host.board.counters(ARN)["abandoned"] == 0


def test_queued_work_of_a_caller_that_left_is_never_run(served):
    release = threading.Event()
    seen = []

    def handler(event, context):
        seen.append(event)
        if event == b"blocker":
            release.wait(WAIT_S)
        return event

    s = served(handler, concurrency=1)
    blocker = Caller(s.host)
    status, blocker_id = blocker.post(b"blocker")
    assert status == 202
    wait_until(lambda: seen == [b"blocker"])
    leaving = Caller(s.host)
    status, leaving_id = leaving.post(b"never run")
    assert status == 202
    waiting = threading.Thread(target=lambda: _get_and_ignore(leaving, leaving_id))
    waiting.start()
    time.sleep(0.3)  # the get_work_result is waiting in the host
    leaving.connection.sock.shutdown(socket.SHUT_RDWR)
    wait_until(lambda: s.host.board.counters(ARN)["abandoned"] == 1)
    release.set()
    assert blocker.get(blocker_id) == (200, None, b"blocker")
    # A later invocation is run after the abandoned one would have been.
    assert blocker.invoke(b"after") == (200, None, b"after")
    waiting.join(WAIT_S)
    blocker.close()
    assert seen == [b"blocker", b"after"]


def _get_and_ignore(caller: Caller, invocation_id: str) -> None:
    try:
        caller.get(invocation_id)
    except (OSError, http.client.HTTPException):
        pass


def test_another_principal_cannot_fetch_an_inline_result(served):
    s = served(lambda event, context: b"secret " + event)
    other_token = s.host.register_function(OTHER_ARN)  # a function calling as a caller
    owner, other = Caller(s.host), Caller(s.host, token=other_token)
    try:
        status, invocation_id = owner.post(b"image")
        assert status == 202
        status, _, body = other.get(invocation_id)
        assert status == 404 and b"secret" not in body
        assert owner.get(invocation_id) == (200, None, b"secret image")
    finally:
        owner.close()
        other.close()


def test_an_inline_run_past_its_deadline_is_answered_with_the_timeout(served):
    def handler(event, context):
        while not context.cancelled():  # sees the deadline even though nobody waits yet
            time.sleep(0.01)
        return b"too late"

    s = served(handler, result_timeout_s=0.5)
    caller = Caller(s.host)
    try:
        status, function_error, body = caller.invoke(b"slow")
    finally:
        caller.close()
    assert status == 200 and function_error == "Unhandled"
    assert json.loads(body)["errorType"] == "TimeoutError"
    wait_until(lambda: s.host.board.counters(ARN)["late_results"] == 1)
    assert s.host.board.counters(ARN)["timeouts"] == 1


def test_a_caller_is_answered_at_its_deadline_while_the_inline_run_goes_on(served):
    release, finished = threading.Event(), []

    def handler(event, context):
        if event == b"stuck":
            release.wait(WAIT_S)  # ignores its deadline
            finished.append(event)
        return event

    s = served(handler, concurrency=2, result_timeout_s=0.5)
    caller = Caller(s.host)
    try:
        status, function_error, body = caller.invoke(b"stuck")
        # Answered by the thread that took the connection over, while the handler still runs.
        assert not finished
        assert (status, function_error) == (200, "Unhandled")
        assert json.loads(body)["errorType"] == "TimeoutError"
        # The connection goes on serving, and the stuck run still holds its slot.
        assert caller.invoke(b"next") == (200, None, b"next")
        assert s.host._server.inline_runs.takeovers == 1
    finally:
        release.set()
        caller.close()
    wait_until(lambda: finished == [b"stuck"])
    wait_until(lambda: s.host.board.counters(ARN)["late_results"] == 1)


def test_shutdown_waits_for_the_inline_run_and_refuses_new_work():
    started, answers = threading.Event(), []

    def handler(event, context):
        started.set()
        time.sleep(0.5)
        return event

    s = Served(handler)
    caller = Caller(s.host)
    late = Caller(s.host)

    def invoke():
        answers.append(caller.invoke(b"in flight"))
    thread = threading.Thread(target=invoke)
    thread.start()
    assert started.wait(WAIT_S)
    stopper = threading.Thread(target=s.host.shutdown, kwargs={"grace_s": WAIT_S})
    stopper.start()
    wait_until(lambda: s.host.board.draining)
    late.connection.request("POST", BASE, body=b"late", headers={"Authorization": s.host.token})
    assert late.connection.getresponse().status == 503
    thread.join(WAIT_S)
    stopper.join(WAIT_S)
    assert answers == [(200, None, b"in flight")]
    s.stop.set()
    s.loop.join(WAIT_S)
    assert not s.loop.is_alive()
    caller.close()
    late.close()


def test_stopping_the_loop_ends_inline_runs_and_waits_for_the_one_in_progress():
    board = WorkBoard(result_timeout_s=WAIT_S)
    board.register(ARN)
    release, ran = threading.Event(), []

    def handler(event, context):
        ran.append(event)
        release.wait(WAIT_S)
        return event

    from connector.ipc.local import BoardClient
    stop = threading.Event()
    loop = threading.Thread(target=run_lambda, args=(ARN, handler, BoardClient(board, ARN)),
                            kwargs={"stop_event": stop, "concurrency": 1})
    loop.start()
    wait_until(lambda: board.slots(ARN) == 1)
    claimed = board.submit(ARN, b"inline", "", "RequestResponse", inline=True)
    assert claimed.runner is not None
    runner = threading.Thread(target=board.run_inline, args=(claimed,))
    runner.start()
    wait_until(lambda: ran == [b"inline"])
    # The one slot is held by the inline run: a queued invocation waits for it.
    queued = board.submit(ARN, b"queued", "", "RequestResponse", inline=True)
    assert queued.runner is None and board.queue_depth(ARN) == 1
    stop.set()
    time.sleep(0.3)
    assert loop.is_alive()  # waits for the inline run
    assert board.slots(ARN) is None  # no new inline run from now on
    release.set()
    loop.join(WAIT_S)
    runner.join(WAIT_S)
    assert not loop.is_alive() and ran == [b"inline"]
    assert board.wait_result(ARN, claimed.invocation_id).result == b"inline"
