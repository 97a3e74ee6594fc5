"""How the SDK chooses the fast path (issue 20, points 2 and 4): used when our host offers it,
the V1 exchange otherwise with no error; one failed attempt per process at most; GG_ML_IPC_FAST=0;
a connection per thread and per process; and the same answers, exceptions and messages on both
paths, byte for byte."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import time

import pytest

from connector.ipc import IPCHost, clientfile, protocol, run_lambda
from connector.ipc.fast import frames
from connector.ipc.host import HostLimits
from connector.ipc.local import BoardClient

from tests.sdk.common import ARGS, ARN, FEEDBACK_ARN, GREENGRASS_VARIABLES, REGION
import greengrass_machine_learning_sdk as ml  # noqa: E402
from greengrass_machine_learning_sdk import _endpoint, _fast, _service  # noqa: E402

NOBODY = 65534


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch, tmp_path):
    """Every test starts outside Greengrass, as a process that has not tried the fast path yet."""
    for name in GREENGRASS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GG_ML_IPC_FILE", str(tmp_path / "ipc.json"))
    monkeypatch.setattr(_fast, "_failed_in", None)


def handler(event, context):
    if event == b"fail":
        raise ValueError("image is truncated")
    if event == b"garbage":
        return b"not json at all"
    if event == b"slow":
        time.sleep(1.0)
    return {"Body": json.dumps({"sha256": hashlib.sha256(event).hexdigest(), "size": len(event),
                                "custom": context.client_context.custom}),
            "ContentType": "application/json"}


class Service(object):
    def __init__(self, tmp_path, arns=(ARN, FEEDBACK_ARN), fast=True, **host_args):
        host_args.setdefault("result_timeout_s", 5.0)
        self.host = IPCHost(client_file=str(tmp_path / "ipc.json"), region=REGION, fast=fast,
                            **host_args).start()
        self.stop = threading.Event()
        self.loops = []
        for arn in arns:
            self.host.register_function(arn, timeout_message="{function_arn} did not answer in time")
            self.loops.append(threading.Thread(target=run_lambda, args=(arn, handler, BoardClient(self.host.board)),
                                               kwargs={"stop_event": self.stop, "concurrency": 4},
                                               daemon=True))
            self.loops[-1].start()

    @property
    def fast_frames(self):
        return self.host.describe_connections()["fast_frames"]

    def close(self):
        self.stop.set()
        self.host.shutdown(grace_s=1.0)
        for loop in self.loops:
            loop.join(5)


@pytest.fixture
def service(tmp_path):
    s = Service(tmp_path)
    yield s
    s.close()


@pytest.fixture
def connects(monkeypatch):
    """The SDK's connection attempts to a fast socket, counted."""
    made = []
    real = _fast.connect

    def counting(fast, timeout):
        made.append(fast.path)
        return real(fast, timeout)

    monkeypatch.setattr(_fast, "connect", counting)
    return made


def infer(body, client=None, **extra):
    args = dict(ARGS, Body=body)
    args.update(extra)
    response = (client or ml.client("inference", timeout=10)).invoke_inference_service(**args)
    return json.loads(response["Body"].read().decode("utf-8"))


def outcome(call):
    """What a caller sees: the answer's bytes, or the exception's type, message and details."""
    try:
        response = call()
    except Exception as exc:  # noqa: BLE001 - what is compared is the exception itself
        return ("raised", type(exc).__name__, str(exc), getattr(exc, "error_type", None),
                getattr(exc, "payload", None))
    if response is None:
        return ("returned", None)
    return ("returned", response["ContentType"], response["Body"].read())


def both_paths(monkeypatch, s, call):
    """(outcome over V1, outcome over the fast path, frames the fast path answered for it)."""
    monkeypatch.setenv("GG_ML_IPC_FAST", "0")
    v1 = outcome(call)
    monkeypatch.setenv("GG_ML_IPC_FAST", "1")
    before = s.fast_frames
    fast = outcome(call)
    return v1, fast, s.fast_frames - before


def inference(**args):
    return lambda: ml.client("inference", timeout=10).invoke_inference_service(**dict(ARGS, **args))


# -- the same answers -----------------------------------------------------------------------------

@pytest.mark.parametrize("case", [
    dict(Body=b"a cat", ContentType="image/jpeg", Accept="application/json"),
    dict(Body=bytes(range(256)) * 4096),  # 1 MiB of every byte value
    dict(Body=b""),
    dict(Body=b"fail"),  # Handled: GreengrassInferenceException with the service's message
    dict(Body=b"garbage"),  # not JSON: GreengrassDependencyException
    dict(Body=b"x", ServiceName="nobodyHere"),  # 404 naming what is served
    dict(Body=b"x" * (64 * 1024 + 1)),  # 413 from max_body_bytes
], ids=["ok", "1MiB", "empty", "handled", "garbage", "unserved", "too-large"])
def test_answers_and_exceptions_are_byte_identical_on_both_paths(tmp_path, monkeypatch, case):
    s = Service(tmp_path, limits=HostLimits(max_body_bytes=max(64 * 1024, 1 << 20)))
    try:
        if case["Body"] == b"x" * (64 * 1024 + 1):
            s.host.shutdown(grace_s=0)
            s = Service(tmp_path, limits=HostLimits(max_body_bytes=64 * 1024))
        v1, fast, used = both_paths(monkeypatch, s, inference(**case))
        assert fast == v1
        assert used >= 1  # it really went the fast way
    finally:
        s.close()


def test_a_timeout_draining_and_a_wrong_token_read_the_same_on_both_paths(tmp_path, monkeypatch):
    s = Service(tmp_path, result_timeout_s=0.3)
    try:
        v1, fast, used = both_paths(monkeypatch, s, inference(Body=b"slow"))  # Unhandled
        assert fast == v1 and used == 1 and "did not answer in time" in v1[2]
        endpoint = _endpoint.cached(service_name="objectDetection")
        wrong = endpoint._replace(token="not-the-token")

        def with_wrong_token():
            _service.GreengrassServiceClient(timeout=5).call(
                ARN, _service.GreengrassServiceMessage(b"e30=", b"x"), wrong)

        v1, fast, used = both_paths(monkeypatch, s, with_wrong_token)
        assert fast == v1 and used == 1 and "403 Forbidden" in v1[2]
        s.host.board.start_draining()
        v1, fast, used = both_paths(monkeypatch, s, inference(Body=b"x"))
        assert fast == v1 and used == 1 and "503 Service Unavailable" in v1[2]
    finally:
        s.close()


def test_feedback_publishes_read_the_same_on_both_paths(service, monkeypatch):
    def publish(prediction):
        return lambda: ml.client("feedback", timeout=10).publish(
            ConfigId="cfg", ModelInput=b"fail" if prediction == "fail" else b"img",
            ModelPrediction={"prediction": prediction}, Metadata={"k": "v"})

    for prediction in ([[1, 0.5, 0, 0, 1, 1]], "fail"):
        v1, fast, used = both_paths(monkeypatch, service, publish(prediction))
        assert fast == v1 and used == 1


def test_what_the_v1_header_line_cannot_carry_goes_the_v1_way(service, monkeypatch, connects):
    """A client context longer than a V1 header line (a 70 KB ContentType) gets the V1
    exchange's own answer (431) on both paths: it is never sent over the fast path."""
    v1, fast, used = both_paths(monkeypatch, service, inference(Body=b"x", ContentType="t" * 70000))
    assert used == 0 and not connects
    # Both went the V1 way: a 431, or (the host closes while the SDK still sends its 70 KB head)
    # a broken pipe, as the V1 exchange has always answered such a call.
    for seen in (v1, fast):
        assert seen[:2] == ("raised", "GreengrassDependencyException")
        assert "431 Request Header Fields Too Large" in seen[2] or "Broken pipe" in seen[2]


def test_an_address_no_v1_path_can_name_reads_the_same(service, monkeypatch):
    monkeypatch.setenv("GG_ML_INFERENCE_FUNCTION_ARNS", "objectDetection=arn:with/a-slash")
    v1, fast, used = both_paths(monkeypatch, service, inference(Body=b"x"))
    assert fast == v1 and used == 1 and "404 Not Found" in v1[2] and "unknown path" in v1[2]


# -- choosing -------------------------------------------------------------------------------------

def test_the_fast_path_is_used_when_the_host_offers_it(service, connects):
    client = ml.client("inference", timeout=10)
    assert infer(b"x", client)["size"] == 1
    for _ in range(3):
        infer(b"again", client)
    assert service.fast_frames == 4 and len(connects) == 1  # one kept connection
    kinds = {c.family for c in service.host.guard.open_connections()}
    assert kinds == {socket.AF_UNIX}  # and no HTTP connection at all


def test_a_starting_service_is_waited_for_on_the_fast_path_too(service):
    service.host.board.starting(ARN, "its model m is loading")
    threading.Timer(1.3, service.host.register_function, args=(ARN,)).start()
    assert infer(b"late")["size"] == 4  # answered once it started, within the call's timeout
    assert service.fast_frames >= 2  # asked again after Retry-After, over the fast path


def test_a_starting_service_is_waited_for_on_the_v1_exchange(service, monkeypatch):
    """The host answers a post while the model loads with 503 ServiceStarting and Retry-After: 1;
    the SDK, held to the V1 exchange, waits as asked and posts again within its timeout."""
    monkeypatch.setenv("GG_ML_IPC_FAST", "0")
    service.host.board.starting(ARN, "its model m is loading")
    entry = clientfile.read(str(service.host.client_file_path))
    connection = http.client.HTTPConnection("127.0.0.1", entry["port"], timeout=10)
    connection.request("POST", protocol.function_path(ARN), body=b"x", headers={
        "Authorization": entry["token"]})
    response = connection.getresponse()
    assert (response.status, response.getheader("Retry-After")) == (503, "1")
    assert json.loads(response.read())["errorType"] == "ServiceStarting"
    connection.close()
    posts = []
    real = _service.GreengrassServiceClient._post

    def counted(self, *args, **kwargs):
        posts.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(_service.GreengrassServiceClient, "_post", counted)
    threading.Timer(1.3, service.host.register_function, args=(ARN,)).start()
    assert infer(b"late")["size"] == 4
    # refused, waited the second Retry-After asked for, posted again: a few posts, not a busy loop
    assert 2 <= len(posts) <= 5 and service.fast_frames == 0, len(posts)


@pytest.mark.parametrize("header,seconds", [("1", 1.0), ("0", 0.05), ("-3", 0.05), ("3600", 5.0),
                                            ("0.2", 0.2), ("nan", None), ("inf", None), ("", None),
                                            ("Wed, 21 Oct 2026 07:28:00 GMT", None)])
def test_retry_after_is_clamped_and_a_date_is_not_waited_for(header, seconds):
    assert _service._retry_seconds(header) == seconds


def test_an_older_host_gets_the_v1_exchange_with_no_error(tmp_path, connects):
    s = Service(tmp_path, fast=False)
    try:
        assert "fast" not in clientfile.read(str(tmp_path / "ipc.json"))
        assert infer(b"x")["size"] == 1 and infer(b"yy")["size"] == 2
        assert not connects and s.fast_frames == 0
    finally:
        s.close()


def test_inside_greengrass_the_v1_exchange_is_used(service, monkeypatch, connects):
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", service.host.token)
    monkeypatch.setenv("GG_DAEMON_PORT", str(service.host.port))
    monkeypatch.setenv("AWS_REGION", REGION)
    assert _endpoint.resolve().fast is None
    assert infer(b"x")["size"] == 1 and not connects and service.fast_frames == 0


def test_gg_ml_ipc_fast_0_forces_the_v1_exchange(service, monkeypatch, connects):
    monkeypatch.setenv("GG_ML_IPC_FAST", "0")
    assert infer(b"x")["size"] == 1 and not connects and service.fast_frames == 0


def break_the_socket(how, s, monkeypatch):
    path = s.host.fast_path
    if how == "missing":
        os.unlink(path)
    elif how == "refused":  # a socket file nobody listens on: a dead host's
        os.unlink(path)
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()
    elif how == "another user's":
        os.chown(path, NOBODY, NOBODY)
    else:  # a host that speaks another version of the frames
        monkeypatch.setattr(frames, "VERSION", frames.VERSION + 1)


@pytest.mark.parametrize("how", ["missing", "refused", "another user's", "another version"])
def test_a_failed_fast_attempt_falls_back_once_per_process(tmp_path, monkeypatch, connects, how):
    if how == "another user's" and os.geteuid() != 0:
        pytest.skip("giving the socket to another user needs root")
    s = Service(tmp_path)
    try:
        break_the_socket(how, s, monkeypatch)
        client = ml.client("inference", timeout=10)
        assert infer(b"x", client)["size"] == 1  # answered over the V1 exchange, no error
        assert infer(b"yy", client)["size"] == 2
        assert infer(b"zzz")["size"] == 3  # a new client of the same process: the same
        assert len(connects) == 1  # one attempt, in this process, and never again
        assert {c.family for c in s.host.guard.open_connections()} == {socket.AF_INET}
        assert s.fast_frames == (1 if how == "another version" else 0)  # that one: answered 505
        assert _fast._failed_in == os.getpid()
    finally:
        s.close()


def test_an_entry_offering_a_socket_outside_its_directory_is_not_used(tmp_path, connects):
    s = Service(tmp_path)
    try:
        path = str(tmp_path / "ipc.json")
        entry = clientfile.read(path)
        for fast in ({"unix": "/tmp/elsewhere.sock", "protocol": 1},
                     {"unix": s.host.fast_path, "protocol": 2}, "not a dict"):
            assert _fast.offered(dict(entry, fast=fast), path) is None
        assert _fast.offered(entry, path) == _fast.FastSocket(s.host.fast_path, os.geteuid())
    finally:
        s.close()


def test_each_thread_and_each_process_keeps_its_own_connection(service, connects):
    client = ml.client("inference", timeout=10)
    assert infer(b"parent", client)["size"] == 6
    seen = []

    def call(i):
        for _ in range(3):
            seen.append(infer(b"t" * i, client)["size"])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(1, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seen) == [1, 1, 1, 2, 2, 2, 3, 3, 3] and len(connects) == 4
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child must not talk over its parent's socket
        try:
            os.write(write, str(infer(b"child!", client)["size"]).encode() + b" " +
                     str(len(connects)).encode())
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    os.close(write)
    assert os.read(read, 100) == b"6 5"  # answered over a connection of its own
    os.close(read)
    assert infer(b"parent", client)["size"] == 6 and len(connects) == 4  # the parent's still works


def test_a_kept_connection_the_host_dropped_is_replaced_once(service, connects):
    client = ml.client("inference", timeout=10)
    assert infer(b"one", client)["size"] == 3
    service.host.guard.hang_up_all()  # as an idle timeout or an eviction would
    time.sleep(0.1)
    assert infer(b"two", client)["size"] == 3 and len(connects) == 2


def test_work_the_host_took_is_never_sent_twice(tmp_path, connects):
    """The connection breaks after the host read the frame: the caller gets the failure, and
    the work is not sent again (over either path), as with the V1 exchange's failed GET."""
    ran = []
    s = Service(tmp_path, arns=())
    s.host.register_function(ARN)

    def breaking(event, context):
        ran.append(event)
        s.host.guard.hang_up_all()
        return {"Body": "{}"}

    loop = threading.Thread(target=run_lambda, args=(ARN, breaking, BoardClient(s.host.board)),
                            kwargs={"stop_event": s.stop}, daemon=True)
    loop.start()
    try:
        with pytest.raises(ml.GreengrassDependencyException) as failure:
            infer(b"once")
        assert "cannot reach the Greengrass IPC" in str(failure.value) and "fast path" in str(failure.value)
        time.sleep(0.3)
        assert ran == [b"once"] and len(connects) == 1
    finally:
        s.close()
        loop.join(5)
