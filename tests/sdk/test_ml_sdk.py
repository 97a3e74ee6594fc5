"""The drop-in greengrass_machine_learning_sdk against the standalone host (no model)."""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from connector.ipc import IPCHost, clientfile, protocol, run_lambda
from connector.ipc.local import BoardClient

from tests.sdk.common import ARGS, ARN, FEEDBACK_ARN, GREENGRASS_VARIABLES, REGION, ROOT
import greengrass_machine_learning_sdk as ml  # noqa: E402
from greengrass_machine_learning_sdk import _endpoint, inference  # noqa: E402


@pytest.fixture(autouse=True)
def no_greengrass(monkeypatch, tmp_path):
    """Every test starts outside Greengrass, with a client file location of its own."""
    for name in GREENGRASS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GG_ML_IPC_FILE", str(tmp_path / "ipc.json"))


def echo_handler(event, context):
    """Upper-cases the input and reports the client context it saw."""
    if event == b"fail":
        raise ValueError("image is truncated")
    if event == b"slow":
        time.sleep(1.0)
    if event == b"garbage":
        return b"not json at all"
    return {"Body": json.dumps({"text": event.decode().upper(), "custom": context.client_context.custom}),
            "ContentType": "application/json"}


class Service(object):
    """A host with its client file and a run_lambda worker serving `arn` with `handler`."""

    def __init__(self, tmp_path, handler=echo_handler, arns=(ARN,), concurrency=2, **host_args):
        host_args.setdefault("result_timeout_s", 5.0)
        self.host = IPCHost(client_file=str(tmp_path / "ipc.json"), region=REGION, **host_args).start()
        self.stop = threading.Event()
        self.threads = []
        for arn in arns:
            self.host.register_function(arn)
            thread = threading.Thread(target=run_lambda, args=(arn, handler, self.host.client(function_arn=arn)),
                                      kwargs={"stop_event": self.stop, "concurrency": concurrency},
                                      daemon=True)
            thread.start()
            self.threads.append(thread)

    def close(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
        self.host.shutdown(grace_s=1.0)


@pytest.fixture
def service(tmp_path):
    s = Service(tmp_path)
    yield s
    s.close()


def infer(body, **extra):
    args = dict(ARGS, Body=body)
    args.update(extra)
    response = ml.client("inference", timeout=10).invoke_inference_service(**args)
    return json.loads(response["Body"].read().decode("utf-8")), response


# -- clients and the interface version -------------------------------------------------------

def test_client_types():
    assert isinstance(ml.client("inference"), inference.Client)
    assert type(ml.client("feedback")).__name__ == "Client"
    for wrong in ("lambda", "Inference", "", None):
        with pytest.raises(ValueError) as refused:
            ml.client(wrong)
        assert "inference" in str(refused.value)


@pytest.mark.parametrize("version", ["1.2", "1.5", "1.10", " 1.11 "])
def test_interface_version_accepted(monkeypatch, version):
    monkeypatch.setenv("GGC_MAX_INTERFACE_VERSION", version)
    assert isinstance(ml.client("inference"), inference.Client)
    assert type(ml.client("feedback")).__name__ == "Client"


@pytest.mark.parametrize("version", ["1.1", "1.0", "2.0", "0.9", "abc", "1", "1.x"])
def test_interface_version_refused(monkeypatch, version):
    monkeypatch.setenv("GGC_MAX_INTERFACE_VERSION", version)
    for kind in ("inference", "feedback"):
        with pytest.raises(ValueError) as refused:
            ml.client(kind)
        assert "GGC_MAX_INTERFACE_VERSION" in str(refused.value)


# -- argument validation (before any IPC: no host is running here) ---------------------------

def test_required_arguments_are_named():
    client = ml.client("inference")
    for missing in ("AlgoType", "ServiceName", "Body"):
        args = dict(ARGS, Body=b"x")
        del args[missing]
        with pytest.raises(ValueError) as refused:
            client.invoke_inference_service(**args)
        assert missing in str(refused.value) and "required" in str(refused.value)
    with pytest.raises(ValueError) as refused:
        client.invoke_inference_service()
    assert all(name in str(refused.value) for name in ("AlgoType", "ServiceName", "Body"))
    with pytest.raises(TypeError):
        client.invoke_inference_service("object-detection")  # keyword arguments only, as before


@pytest.mark.parametrize("name", ["a", "-abc", "ab_c", "ab c", "x" * 64, "", "abc\n", 12])
def test_names_must_match_the_pattern(name):
    client = ml.client("inference")
    for key in ("AlgoType", "ServiceName"):
        with pytest.raises(ValueError) as refused:
            client.invoke_inference_service(**dict(ARGS, Body=b"x", **{key: name}))
        assert key in str(refused.value) and "^[a-zA-Z0-9][a-zA-Z0-9-]{1,62}$" in str(refused.value)


def test_body_and_header_types_are_checked():
    client = ml.client("inference")
    for body in (12, 1.5, ["a"], object()):
        with pytest.raises(ValueError) as refused:
            client.invoke_inference_service(Body=body, **ARGS)
        assert "Body" in str(refused.value)
    with pytest.raises(ValueError):
        client.invoke_inference_service(Body=b"x", ContentType=5, **ARGS)
    with pytest.raises(ValueError):
        client.invoke_inference_service(Body=b"x", Accept=b"json", **ARGS)


def test_streaming_body_reads_like_boto3():
    body = ml.StreamingBody(b"0123456789")
    assert body.read(3) == b"012"
    assert body.read(amt=2) == b"34"
    assert body.read() == b"56789"
    assert body.read() == b""
    body.close()
    with pytest.raises(ValueError):
        body.read()


# -- calls through the standalone host -------------------------------------------------------

def test_invoke_through_the_client_file_with_no_greengrass_variables(service):
    result, response = infer(b"a cat", ContentType="image/jpeg")
    assert result == {"text": "A CAT", "custom": {"Content-Type": "image/jpeg"}}
    assert response["ContentType"] == "application/json"
    assert isinstance(response["Body"], ml.StreamingBody)


def test_client_context_carries_only_given_keys(service):
    assert infer(b"x")[0]["custom"] == {}
    assert infer(b"x", Accept="application/json")[0]["custom"] == {"Accept": "application/json"}
    assert infer(b"x", ContentType="image/png", Accept="application/json")[0]["custom"] == {
        "Content-Type": "image/png", "Accept": "application/json"}
    assert infer(b"x", ContentType=None)[0]["custom"] == {}
    # Unknown arguments were ignored by the AWS SDK; still so (with a warning in the log).
    assert infer(b"x", CustomAttributes="a")[0]["custom"] == {}


def test_body_may_be_a_file_or_bytearray(service, tmp_path):
    path = tmp_path / "image.jpg"
    path.write_bytes(b"from a file")
    with open(str(path), "rb") as handle:
        assert infer(handle)[0]["text"] == "FROM A FILE"
    assert infer(io.BytesIO(b"stream"))[0]["text"] == "STREAM"
    assert infer(bytearray(b"array"))[0]["text"] == "ARRAY"


def test_handled_error_is_an_inference_exception_with_the_service_message(service):
    with pytest.raises(ml.GreengrassInferenceException) as failure:
        infer(b"fail")
    assert str(failure.value) == "image is truncated"
    assert failure.value.error_type == "ValueError"
    assert not isinstance(failure.value, ml.GreengrassDependencyException)


def test_unserved_service_is_a_dependency_exception_at_once(service):
    started = time.monotonic()
    with pytest.raises(ml.GreengrassDependencyException) as failure:
        infer(b"x", ServiceName="nobodyHere")
    assert time.monotonic() - started < 2.0
    assert "GG-ML-INF-object-detection-nobodyHere" in str(failure.value)


def test_timeout_is_a_dependency_exception(tmp_path):
    s = Service(tmp_path, result_timeout_s=0.3)
    try:
        with pytest.raises(ml.GreengrassDependencyException) as failure:
            infer(b"slow")
        assert "Unhandled" in str(failure.value) and "0.3 s" in str(failure.value)
    finally:
        s.close()


def test_malformed_service_answer_is_a_dependency_exception(service):
    with pytest.raises(ml.GreengrassDependencyException) as failure:
        infer(b"garbage")
    assert "not JSON" in str(failure.value)


def test_missing_client_file_is_a_dependency_exception_naming_it(tmp_path):
    with pytest.raises(ml.GreengrassDependencyException) as failure:
        infer(b"x")
    assert str(tmp_path / "ipc.json") in str(failure.value)
    assert "GG_ML_IPC_FILE" in str(failure.value)


def test_unreachable_host_and_wrong_token_are_dependency_exceptions(service, tmp_path):
    path = str(tmp_path / "ipc.json")
    clientfile.publish(path, clientfile.DEFAULT_NAME, "127.0.0.1", service.host.port, "wrong-token", REGION)
    with pytest.raises(ml.GreengrassDependencyException) as failure:
        infer(b"x")
    assert "403" in str(failure.value)
    service.close()
    clientfile.publish(path, clientfile.DEFAULT_NAME, "127.0.0.1", service.host.port, service.host.token, REGION)
    with pytest.raises(ml.GreengrassDependencyException) as failure:
        infer(b"x")
    assert "cannot reach" in str(failure.value)
    with open(path, "w") as handle:
        handle.write("{broken")
    with pytest.raises(ml.GreengrassDependencyException):
        infer(b"x")


def test_greengrass_variables_take_precedence_over_the_client_file(service, monkeypatch, tmp_path):
    monkeypatch.setenv("GG_ML_IPC_FILE", str(tmp_path / "does-not-exist.json"))
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", service.host.token)
    monkeypatch.setenv("GG_DAEMON_PORT", str(service.host.port))
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("GGC_MAX_INTERFACE_VERSION", "1.5")
    assert infer(b"inside greengrass")[0]["text"] == "INSIDE GREENGRASS"
    monkeypatch.setenv("AWS_REGION", "us-west-2")  # a different region names a different service
    with pytest.raises(ml.GreengrassDependencyException):
        infer(b"x")
    monkeypatch.delenv("AWS_REGION")
    with pytest.raises(ml.GreengrassDependencyException) as failure:
        infer(b"x")
    assert "AWS_REGION" in str(failure.value)


def test_client_file_region_wins_over_the_shell_region(service, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert infer(b"x")[0]["text"] == "X"


def test_service_name_can_map_to_a_user_lambda_arn(tmp_path, monkeypatch):
    user_arn = "arn:aws:lambda:eu-west-1:123456789012:function:objectDetector:3"
    s = Service(tmp_path, arns=(user_arn,))
    try:
        with pytest.raises(ml.GreengrassDependencyException):
            infer(b"x")  # the GG-ML-INF address is not served here
        monkeypatch.setenv("GG_ML_INFERENCE_FUNCTION_ARNS", json.dumps({"objectDetection": user_arn}))
        assert infer(b"json map")[0]["text"] == "JSON MAP"
        monkeypatch.setenv("GG_ML_INFERENCE_FUNCTION_ARNS", "other=arn:x, objectDetection=" + user_arn)
        assert infer(b"pairs")[0]["text"] == "PAIRS"
        monkeypatch.setenv("GG_ML_INFERENCE_FUNCTION_ARNS", "objectDetection")
        with pytest.raises(ValueError) as refused:
            infer(b"x")
        assert "GG_ML_INFERENCE_FUNCTION_ARNS" in str(refused.value)
    finally:
        s.close()


def test_function_arn_map_parsing():
    parse = inference.parse_function_arns
    assert parse("") == {} and parse("  ") == {}
    assert parse('{"a": "arn:1"}') == {"a": "arn:1"}
    assert parse("a=arn:aws:lambda:r:1:function:f:2, b = arn:2 ,") == {
        "a": "arn:aws:lambda:r:1:function:f:2", "b": "arn:2"}
    for bad in ('{"a": 1}', "{not json", "a", "=arn", "a=", '["a"]'):
        with pytest.raises(ValueError):
            parse(bad)
    assert inference.service_address("image-classification", "ic", "us-east-1", {}) == \
        "arn:aws:lambda:us-east-1:aws:function:GG-ML-INF-image-classification-ic"
    # The host's owner builds the same address to register it.
    assert protocol.inference_function_arn(REGION, "object-detection", "objectDetection") == ARN
    assert protocol.feedback_function_arn(REGION) == FEEDBACK_ARN


def test_many_concurrent_clients_each_get_their_own_answer(tmp_path):
    s = Service(tmp_path, concurrency=4)
    errors, answers = [], {}

    def user(index):
        try:
            client = ml.client("inference", timeout=10)
            for request in range(10):
                text = "client {} request {}".format(index, request)
                response = client.invoke_inference_service(Body=text.encode(), **ARGS)
                answers[(index, request)] = json.loads(response["Body"].read())["text"]
        except Exception as exc:  # reported below
            errors.append(exc)

    try:
        users = [threading.Thread(target=user, args=(i,)) for i in range(16)]
        for thread in users:
            thread.start()
        for thread in users:
            thread.join(30)
        assert not any(t.is_alive() for t in users)
    finally:
        s.close()
    assert errors == []
    assert len(answers) == 160
    for (index, request), text in answers.items():
        assert text == "CLIENT {} REQUEST {}".format(index, request)


# -- feedback --------------------------------------------------------------------------------

def test_feedback_publish_sends_input_prediction_and_metadata(tmp_path):
    received = []

    def feedback(event, context):
        if context.client_context.custom.get("ConfigId") == "refuse":
            raise KeyError("Feedback configuration map does not contain config_id: refuse")
        received.append((event, context.client_context.custom, context.invoked_function_arn))
        return None

    s = Service(tmp_path, handler=feedback, arns=(FEEDBACK_ARN,))
    try:
        client = ml.client("feedback", timeout=10)
        prediction = {"prediction": [[1, 0.9, 0.1, 0.1, 0.5, 0.5]]}
        assert client.publish(ConfigId="cfg-1", ModelInput=b"\xff\xd8jpeg",
                              ModelPrediction=prediction, Metadata={"camera": "door"}) is None
        client.publish(ConfigId="cfg-2", ModelInput=io.BytesIO(b"png"), ModelPrediction=[0.2, 0.8])
        assert received == [
            (b"\xff\xd8jpeg", {"ConfigId": "cfg-1", "ModelPrediction": prediction,
                               "Metadata": {"camera": "door"}}, FEEDBACK_ARN),
            (b"png", {"ConfigId": "cfg-2", "ModelPrediction": [0.2, 0.8], "Metadata": {}}, FEEDBACK_ARN),
        ]
        with pytest.raises(ml.GreengrassFeedbackException) as failure:
            client.publish(ConfigId="refuse", ModelInput=b"x", ModelPrediction=[1.0])
        assert "refuse" in str(failure.value)
    finally:
        s.close()
    with pytest.raises(ml.GreengrassDependencyException):
        ml.client("feedback").publish(ConfigId="cfg-1", ModelInput=b"x", ModelPrediction=[1.0])


def test_feedback_address_can_be_overridden(tmp_path, monkeypatch):
    user_arn = "arn:aws:lambda:eu-west-1:123456789012:function:feedback:1"
    s = Service(tmp_path, handler=lambda event, context: None, arns=(user_arn,))
    try:
        with pytest.raises(ml.GreengrassDependencyException):
            ml.client("feedback").publish(ConfigId="cfg", ModelInput=b"x", ModelPrediction=[1.0])
        monkeypatch.setenv("GG_ML_FEEDBACK_FUNCTION_ARN", user_arn)
        ml.client("feedback", timeout=10).publish(ConfigId="cfg", ModelInput=b"x", ModelPrediction=[1.0])
    finally:
        s.close()


def test_feedback_arguments_are_validated():
    client = ml.client("feedback")
    good = dict(ConfigId="cfg", ModelInput=b"x", ModelPrediction=[0.5])
    for missing in good:
        args = dict(good)
        del args[missing]
        with pytest.raises(ValueError) as refused:
            client.publish(**args)
        assert missing in str(refused.value)
    for key, value in (("ConfigId", "-bad"), ("ConfigId", 7), ("ModelPrediction", "0.5"),
                       ("Metadata", ["a"]), ("ModelInput", 3), ("ModelPrediction", [object()])):
        with pytest.raises(ValueError) as refused:
            client.publish(**dict(good, **{key: value}))
        assert key in str(refused.value)


# -- packaging facts -------------------------------------------------------------------------

def test_client_file_lookup_agrees_with_the_host(tmp_path):
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    for env in ({"HOME": "/home/u"}, {"HOME": "/home/u", "XDG_RUNTIME_DIR": str(xdg)},
                {"HOME": "/h", "XDG_RUNTIME_DIR": str(tmp_path / "absent")},
                {"HOME": "/h", "XDG_RUNTIME_DIR": str(xdg), "GG_ML_IPC_FILE": "/etc/x.json"}):
        assert _endpoint.client_file_path(env) == clientfile.default_path(env)


def test_client_file_safety_rule_and_entry_choice_agree_with_the_host(tmp_path):
    """The SDK keeps its own copy of the safety rule and the entry format: both must agree."""
    path = str(tmp_path / "ipc.json")
    clientfile.publish(path, "alpha", "127.0.0.1", 1, "tok-a", "eu-west-1")
    clientfile.publish(path, "beta", "127.0.0.1", 2, "tok-b", "eu-west-1")
    for name in ("alpha", "beta"):
        assert _endpoint.read_client_file(path, name)["token"] == clientfile.read(path, name)["token"]
    with pytest.raises(ValueError, match="several hosts"):
        _endpoint.read_client_file(path)
    with pytest.raises(ValueError, match="several hosts"):
        clientfile.read(path)
    cases = [(0o700, 0o600), (0o777, 0o600), (0o770, 0o600), (0o1777, 0o600), (0o700, 0o666)]
    for dir_mode, file_mode in cases:
        os.chmod(str(tmp_path), dir_mode)
        os.chmod(path, file_mode)
        sdk, host = _endpoint.unsafe_reason(path), clientfile.unsafe_reason(path)
        assert sdk == host, (oct(dir_mode), oct(file_mode), sdk, host)
        assert (sdk is None) == (dir_mode == 0o700 and file_mode == 0o600), (oct(dir_mode), sdk)
    os.chmod(str(tmp_path), 0o700)


def test_sdk_is_self_contained():
    """It must import (and build a request) with nothing but the standard library and itself."""
    script = textwrap.dedent("""
        import sys
        sys.path = [p for p in sys.path if p not in ("", {root!r})]
        sys.path.insert(0, {sdk!r})
        import greengrass_machine_learning_sdk as ml
        ml.client("inference"); ml.client("feedback")
        mine = [m for m in sys.modules if m.split(".")[0] in ("connector", "greengrass_common",
                "greengrass_ipc_python_sdk", "greengrasssdk", "numpy", "yaml")]
        assert not mine, mine
    """).format(root=ROOT, sdk=os.path.join(ROOT, "ml_sdk"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) + GREENGRASS_VARIABLES}
    result = subprocess.run([sys.executable, "-c", script], cwd=os.path.join(ROOT, "ml_sdk"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    assert result.returncode == 0, result.stderr.decode()


def test_exceptions_and_version_are_exported():
    assert ml.__version__ == "1.1.0"
    assert issubclass(ml.GreengrassInferenceException, Exception)
    assert issubclass(ml.GreengrassFeedbackException, Exception)
    assert issubclass(ml.GreengrassDependencyException, Exception)
    from greengrass_machine_learning_sdk.exception import GreengrassDependencyException
    from greengrass_machine_learning_sdk.inference import GreengrassInferenceException
    assert GreengrassDependencyException is ml.GreengrassDependencyException
    assert GreengrassInferenceException is ml.GreengrassInferenceException


def test_wire_format_matches_the_original_sdk(tmp_path):
    """What arrives at the service: the body as given, and the client context the AWS SDK sent."""
    host = IPCHost(client_file=str(tmp_path / "ipc.json"), region=REGION, result_timeout_s=5).start()
    host.register_function(ARN)
    worker = host.client(timeout=5, function_arn=ARN)
    outcome = []
    caller = threading.Thread(target=lambda: outcome.append(infer(
        b"\x00\xffimage", ContentType="image/jpeg", Accept="application/json")))
    caller.start()
    try:
        work = worker.get_work(ARN)
        assert work.payload == b"\x00\xffimage"
        assert work.client_context == base64.b64encode(json.dumps(
            {"custom": {"Content-Type": "image/jpeg", "Accept": "application/json"}}).encode()).decode()
        worker.post_work_result(ARN, work.invocation_id,
                                json.dumps({"Body": json.dumps({"text": "ok"}),
                                            "ContentType": "application/json"}))
        caller.join(5)
        assert outcome[0][0] == {"text": "ok"}
        assert outcome[0][1]["ContentType"] == "application/json"
    finally:
        caller.join(5)
        host.shutdown(grace_s=0.5)


# -- keep-alive -------------------------------------------------------------------------------------

@pytest.fixture
def quiet_service(tmp_path):
    """A host whose function is served in-process (BoardClient), so every HTTP connection the
    host sees is the SDK's."""
    host = IPCHost(client_file=str(tmp_path / "ipc.json"), region=REGION).start()
    host.register_function(ARN)
    host.set_ready()
    stop = threading.Event()
    loop = threading.Thread(target=run_lambda, args=(ARN, echo_handler, BoardClient(host.board)),
                            kwargs={"stop_event": stop})
    loop.start()
    yield host
    stop.set()
    loop.join(10)
    host.shutdown(grace_s=0)


def host_connections(host):
    return set(host.guard.open_connections())


def echo(client, payload):
    response = client.invoke_inference_service(**dict(ARGS, Body=payload))
    return json.loads(response["Body"].read().decode("utf-8"))["text"]


def test_client_reuses_its_connection(quiet_service):
    client = ml.client("inference", timeout=10)
    assert echo(client, b"abc") == "ABC"
    first = host_connections(quiet_service)
    for _ in range(3):
        assert echo(client, b"abc") == "ABC"
    # post_work and get_work_result of four calls, all over one connection
    assert len(first) == 1 and host_connections(quiet_service) == first


def test_client_recovers_when_the_host_dropped_its_idle_connection(quiet_service):
    client = ml.client("inference", timeout=10)
    assert echo(client, b"one") == "ONE"
    quiet_service.guard.hang_up_all()  # as a restarting core or an idle timeout would
    time.sleep(0.1)
    assert echo(client, b"two") == "TWO"


def test_threads_do_not_share_a_connection(quiet_service):
    client = ml.client("inference", timeout=10)
    seen = []

    def call(i):
        for _ in range(5):
            seen.append(echo(client, "t{}".format(i).encode()))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seen) == sorted(["T{}".format(i) for i in range(4)] * 5)
    deadline = time.monotonic() + 5
    while host_connections(quiet_service) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not host_connections(quiet_service)  # a finished thread's connection is closed with it


# -- the endpoint is kept between calls ------------------------------------------------------

def test_the_client_file_is_read_once_while_it_is_unchanged(service, monkeypatch):
    reads = []
    real = _endpoint.read_client_file
    monkeypatch.setattr(_endpoint, "read_client_file", lambda *a, **k: reads.append(a) or real(*a, **k))
    for _ in range(5):
        assert infer(b"x")[0]["text"] == "X"
    assert len(reads) <= 1  # 0 when an earlier test in this process already found this file


def test_a_host_restarted_elsewhere_is_found_again(tmp_path):
    first = Service(tmp_path)
    try:
        assert infer(b"one")[0]["text"] == "ONE"
        old = (first.host.port, first.host.token)
    finally:
        first.close()
    second = Service(tmp_path)  # rewrites the client file: another port and token
    try:
        assert (second.host.port, second.host.token) != old
        assert infer(b"two")[0]["text"] == "TWO"
    finally:
        second.close()


def test_a_kept_endpoint_that_fails_before_the_post_is_looked_up_again(service, tmp_path):
    """The file looks unchanged (same fingerprint) but the kept endpoint is gone: the post fails,
    so nothing ran, and the call is made once more at the endpoint the file gives now."""
    path = str(tmp_path / "ipc.json")
    closed = socket_port_nobody_listens_on()
    stale = _endpoint.Endpoint("127.0.0.1", closed, service.host.token, REGION, "client file " + path, 5.0)
    with _endpoint._cache_lock:
        _endpoint._cache[(path, "objectDetection")] = (_endpoint._fingerprint(path), stale)
    assert infer(b"again")[0]["text"] == "AGAIN"
    assert _endpoint.cached(service_name="objectDetection").port == service.host.port


def test_a_failure_at_the_endpoint_the_file_gives_is_not_retried(service, tmp_path):
    path = str(tmp_path / "ipc.json")
    assert infer(b"x")[0]["text"] == "X"
    service.close()  # removes its entry; written back, the file points at a closed port
    clientfile.publish(path, clientfile.DEFAULT_NAME, "127.0.0.1", service.host.port, service.host.token, REGION)
    with pytest.raises(ml.GreengrassDependencyException) as failure:
        infer(b"x")
    assert "cannot reach" in str(failure.value)
    assert str(service.host.port) in str(failure.value)


def socket_port_nobody_listens_on():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_process_start_time_is_the_same_from_any_thread_and_from_outside():
    """The client file's liveness check compares the host's start time, written by whichever
    thread starts the host, with what the reader finds. Under qemu-user a process reading its
    own /proc/<pid>/stat gets the calling thread's start time from qemu (found in the arm64
    chroot: a host started in a pytest thread minutes after the process looked stale)."""
    pid = os.getpid()
    seen = {}

    def read(key):
        seen[key] = (clientfile.process_start(pid), _endpoint.process_start(pid))

    read("main")
    time.sleep(0.2)  # 20 clock ticks: under qemu the later thread's start time differs
    thread = threading.Thread(target=read, args=("thread",))
    thread.start()
    thread.join()
    code = "from connector.ipc import clientfile; print(clientfile.process_start({}))".format(pid)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    outside = int(subprocess.check_output([sys.executable, "-c", code], cwd=root).decode())
    assert seen["main"] == seen["thread"] == (outside, outside)
