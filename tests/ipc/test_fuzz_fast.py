"""Fuzz the fast path's frame parser over the host's real Unix socket (issue 20, point 4; bounded,
derandomized), as tests/ipc/test_fuzz_ipc.py does for HTTP.

Byte streams are made of frames whose every field may be wrong: the magic, the version, the
operation, the declared lengths (true, or off, so the stream is read differently from how it was
built), the token (the callers', a function's, none, garbage), the ARN (served, not served, empty,
with a slash, not UTF-8, over its cap), the client context (good, too deep, not base64, not an
object, over 64 KiB, garbage), the payload (any bytes, over max_body_bytes), cut short anywhere,
followed by another frame or by garbage; and streams of random bytes.

Each stream is also run through a model of the documented rules (``simulate``: the checks of
connector/ipc/fast/server.py in their order, the statuses of connector/ipc/calls.py), and the
properties checked are:

* every frame read whole gets exactly one well-formed answer frame (magic, version, lengths that
  add up, a JSON ``errorMessage``/``errorType`` body for each refusal), with the documented call,
  status and errorType; frames are answered in order on a kept connection, and the host closes
  exactly when the answer says so (``FLAG_CLOSING``) or the stream ended mid-frame;
* what a frame delivers reaches the function intact (its payload and client context);
* after every stream a good call is answered, and at the end no connection thread is left
  behind, and the host's threads still run.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from connector.ipc import IPCHost, protocol, run_lambda
from connector.ipc.fast import frames
from connector.ipc.host import HostLimits
from connector.ipc.local import BoardClient
from tests.fast_client import FastConnection
from tests.ipc.helpers import expected_custom

TOKEN = "fuzz-token-0123456789abcdefABCDEF_-xyz"
FN_TOKEN = "fuzz-function-token-of-the-served-arn"
TOKENS = {TOKEN.encode(), FN_TOKEN.encode()}
ARN = "arn:aws:lambda:us-east-1:aws:function:GG-ML-INF-object-detection-fuzz"
UNSERVED = "arn:aws:lambda:us-east-1:aws:function:GG-ML-INF-object-detection-nobody"
MAX_BODY = 2048
LIMIT = protocol.MAX_CLIENT_CONTEXT_BYTES

FUZZ = settings(max_examples=1500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def echo(payload: bytes, context) -> dict:
    return {"sha256": hashlib.sha256(payload).hexdigest(), "custom": context.client_context.custom}


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz-fast")
    host = IPCHost(token=TOKEN, client_file=str(directory / "ipc.json"), result_timeout_s=5.0,
                   limits=HostLimits(max_body_bytes=MAX_BODY, head_timeout_s=5.0,
                                     body_timeout_s=5.0, idle_timeout_s=10.0)).start()
    host.register_function(ARN, token=FN_TOKEN)
    host.set_ready()
    stop = threading.Event()
    loop = threading.Thread(target=run_lambda, args=(ARN, echo, BoardClient(host.board)),
                            kwargs={"stop_event": stop, "concurrency": 2}, daemon=True)
    loop.start()
    yield host, loop
    stop.set()
    loop.join(10)
    host.shutdown(grace_s=1.0)


# -- the model of the documented rules -----------------------------------------------------------

def simulate(stream: bytes):
    """The answers the host owes the stream, in order: (call, status, errorType, closing, result)."""
    answers, at = [], 0
    size = frames.REQUEST_HEADER.size
    while len(stream) - at >= size:
        magic, version, operation, t, a, c, p = frames.REQUEST_HEADER.unpack_from(stream, at)
        at += size
        if magic != frames.REQUEST_MAGIC:
            return answers + [(0, 400, "BadFrame", True, None)]
        if version != frames.VERSION:
            return answers + [(0, 505, "UnsupportedVersion", True, None)]
        if operation != frames.OP_INVOKE:
            return answers + [(0, 400, "UnknownOperation", True, None)]
        if t > frames.MAX_TOKEN_BYTES or a > frames.MAX_ARN_BYTES:
            return answers + [(0, 400, "FieldTooLarge", True, None)]
        if c > LIMIT:
            return answers + [(1, 400, "InvalidClientContext", True, None)]
        if len(stream) - at < t + a + c:
            return answers  # cut short: the host waits, then the stream ends
        token, arn = stream[at:at + t], stream[at + t:at + t + a].decode("utf-8", "replace")
        context = stream[at + t + a:at + t + a + c].decode("latin-1").strip()
        at += t + a + c
        if not token:
            return answers + [(1, 401, "Unauthorized", True, None)]
        if token not in TOKENS:
            return answers + [(1, 403, "Forbidden", True, None)]
        if not arn or "/" in arn:
            return answers + [(1, 404, "UnknownPath", True, None)]
        if p > MAX_BODY:
            return answers + [(1, 413, "PayloadTooLarge", True, None)]
        if len(stream) - at < p:
            return answers
        payload = stream[at:at + p]
        at += p
        custom = expected_custom(context)
        if custom is None:
            answers.append((1, 400, "InvalidClientContext", False, None))
        elif arn != ARN:
            answers.append((1, 404, "ResourceNotFoundException", False, None))
        else:
            answers.append((2, 200, "", False, {"sha256": hashlib.sha256(payload).hexdigest(),
                                                "custom": custom}))
    return answers


# -- the streams ----------------------------------------------------------------------------------

def _context(custom) -> bytes:
    return base64.b64encode(json.dumps({"custom": custom}).encode())


GOOD_CONTEXTS = st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=3).map(_context)
CONTEXTS = st.one_of(
    st.just(b""), GOOD_CONTEXTS, GOOD_CONTEXTS, GOOD_CONTEXTS,
    st.integers(28, 40).map(lambda n: base64.b64encode(("[" * n + "]" * n).encode())),
    st.sampled_from([b"not base64!", base64.b64encode(b"[1, 2]"), base64.b64encode(b"{bad json"),
                     base64.b64encode("{\"custom\": \"\xff\"}".encode("latin-1")), b" \t e30= \x85",
                     b"A" * LIMIT, b"A" * (LIMIT + 1)]),
    st.binary(max_size=64),
)
def mostly(good, bad):
    """`good` nine times in ten, else something drawn from `bad`: deep enough into the checks."""
    return st.integers(0, 9).flatmap(lambda n: bad if n == 0 else st.just(good))


TOKENS_ = st.integers(0, 5).flatmap(lambda n: st.sampled_from([TOKEN.encode(), FN_TOKEN.encode()])
                                    if n > 1 else st.sampled_from([b"", b"x" * 4097]) if n
                                    else st.binary(max_size=48))
ARNS = st.one_of(st.just(ARN.encode()), st.just(ARN.encode()),
                 st.sampled_from([UNSERVED.encode(), b"", b"arn:with/slash", b"\xff\xfe" + ARN.encode(),
                                  ("\u00e9" + ARN).encode(), b"a" * 4097]),
                 st.binary(max_size=64))
PAYLOADS = st.one_of(st.binary(max_size=256), st.integers(MAX_BODY - 2, MAX_BODY + 2).map(lambda n: b"p" * n))


@st.composite
def frame(draw) -> bytes:
    magic = draw(mostly(frames.REQUEST_MAGIC, st.binary(min_size=4, max_size=4)))
    version = draw(mostly(frames.VERSION, st.integers(0, 255)))
    operation = draw(mostly(frames.OP_INVOKE, st.integers(0, 255)))
    token, arn, context, payload = draw(TOKENS_), draw(ARNS), draw(CONTEXTS), draw(PAYLOADS)
    lengths = [len(token), len(arn), len(context), len(payload)]
    if draw(st.integers(0, 9)) == 0:  # a declared length that is not the field's
        which = draw(st.integers(0, 3))
        lengths[which] = max(0, lengths[which] + draw(st.integers(-8, 8)))
    lengths[0], lengths[1] = min(lengths[0], 0xFFFF), min(lengths[1], 0xFFFF)
    head = frames.REQUEST_HEADER.pack(magic, version, operation, *lengths)
    return head + token + arn + context + payload


FRAMES = st.tuples(frame(), st.one_of(st.just(b""), frame(), frame(), st.binary(max_size=40)),
                   mostly(None, st.integers(0, 200))).map(
    lambda t: (t[0] + t[1])[:t[2]] if t[2] is not None else t[0] + t[1])
STREAMS = st.integers(0, 9).flatmap(
    lambda n: FRAMES if n > 1 else st.binary(max_size=200) if n
    else st.binary(max_size=30).map(lambda b: frames.REQUEST_MAGIC + b))


# -- the wire -------------------------------------------------------------------------------------

def exchange(path: str, stream: bytes) -> bytes:
    """Send `stream`, end it, and read everything until the host closes."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(15)
    sock.connect(path)
    try:
        try:
            sock.sendall(stream)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the host closed early; what it answered is still there to read
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk
    finally:
        sock.close()


def answers_in(data: bytes):
    """The answer frames in `data`, each checked for form; the bytes must be nothing else."""
    found, at = [], 0
    while at < len(data):
        assert len(data) - at >= frames.ANSWER_HEADER.size, "a cut answer header"
        fields = frames.ANSWER_HEADER.unpack_from(data, at)
        assert fields[0] == frames.ANSWER_MAGIC and fields[1] == frames.VERSION
        size = frames.ANSWER_HEADER.size + sum(fields[5:9]) + fields[9]
        assert len(data) - at >= size, "a cut answer"
        found.append(frames.parse_answer(data[at:at + size]))
        at += size
    return found


def check(rig, stream: bytes) -> None:
    host, _ = rig
    expected = simulate(stream)
    note("expected {}".format([e[:4] for e in expected]))
    for e in expected:
        event("{} {}{}".format(e[1], e[2], " closing" if e[3] else ""))
    event("{} answers".format(len(expected)))
    got = answers_in(exchange(host.fast_path, stream))
    note("got {}".format([(a.call, a.status, a.error_type, a.flags) for a in got]))
    assert len(got) == len(expected)
    for answer, (call, status, error_type, closing, result) in zip(got, expected):
        assert (answer.call, answer.status, answer.error_type) == (call, status, error_type)
        assert bool(answer.flags & frames.FLAG_CLOSING) == closing
        assert answer.reason  # the status line's phrase
        if status == 200:
            assert answer.function_error == "" and json.loads(answer.payload) == result
        else:
            body = json.loads(answer.payload)
            assert set(body) == {"errorMessage", "errorType"} and body["errorType"] == error_type
    with FastConnection(host.fast_path) as connection:  # the host serves the next caller
        assert connection.invoke(TOKEN, ARN, b"after").status == 200


@FUZZ
@given(STREAMS)
def test_fuzzed_frames_get_the_documented_answers(rig, stream):
    check(rig, stream)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.binary(min_size=1, max_size=400))
def test_random_bytes_are_refused_cleanly(rig, stream):
    check(rig, stream)


def test_no_thread_is_left_behind_and_the_host_still_runs(rig):
    host, loop = rig
    def connection_threads() -> int:
        return [t.name for t in threading.enumerate()].count("ipc-fast-connection")

    # A thread gives its slot back just before it ends: both are awaited, within the same bound.
    deadline = time.monotonic() + 10
    while (host.guard.describe()["open"] or connection_threads()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host.guard.describe()["open"] == 0  # every connection thread ended with its connection
    assert connection_threads() == 0 and "ipc-fast" in [t.name for t in threading.enumerate()]
    assert loop.is_alive()
    with FastConnection(host.fast_path) as connection:
        assert connection.invoke(FN_TOKEN, ARN, os.urandom(100)).status == 200


def test_a_frame_cut_short_and_left_open_is_closed_by_the_deadlines(rig):
    host, _ = rig
    frame_bytes = frames.request(TOKEN.encode(), ARN.encode(), b"", b"p" * 100)
    before = dict(host.guard.counters)
    for cut in (5, frames.REQUEST_HEADER.size + 3, len(frame_bytes) - 1):
        with FastConnection(host.fast_path, timeout=20) as connection:
            connection.sock.sendall(frame_bytes[:cut])  # and nothing more, never closed
            assert connection.closed(timeout=15)  # the host hung up: no thread waits forever
    assert host.guard.counters["head_timeouts"] - before["head_timeouts"] == 1
    assert host.guard.counters["body_timeouts"] - before["body_timeouts"] == 2


def test_the_header_layout_is_what_the_docs_say():
    assert frames.REQUEST_HEADER.size == 18 and frames.ANSWER_HEADER.size == 17
    assert struct.calcsize("!4sBBHHII") == 18
