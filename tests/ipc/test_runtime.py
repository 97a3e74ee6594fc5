"""run_lambda against the standalone host: in a thread and in a separate process."""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from connector.ipc import IPCClient, IPCError, IPCHost, run_lambda
from connector.ipc import protocol
from connector.ipc.runtime import encode_result

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "ml_sdk"))
import greengrass_machine_learning_sdk as ml  # noqa: E402

ARN = "arn:aws:lambda:eu-west-1:aws:function:GG-ML-INF-object-detection-svc"
SDK_ARGS = dict(AlgoType="object-detection", ServiceName="svc", ContentType="image/jpeg")


def upper_handler(event, context):
    if event == b"raise":
        raise ValueError("not a JPEG or PNG image")
    return {"Body": event.decode().upper(), "ContentType": "application/json"}


class Serving(object):
    """run_lambda in a background thread, stopped (and checked stopped) on exit."""

    def __init__(self, host, handler, arn=ARN, concurrency=1, client=None):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=run_lambda, args=(arn, handler, client or host.client(function_arn=arn)),
                                       kwargs={"stop_event": self.stop, "concurrency": concurrency},
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive(), "run_lambda did not stop"


@pytest.fixture
def host():
    h = IPCHost(write_client_file=False, region="eu-west-1", result_timeout_s=5.0).start()
    h.register_function(ARN)
    yield h
    h.shutdown(grace_s=1.0)


def invoke(client, payload, custom=None, arn=ARN):
    context = protocol.encode_client_context(custom or {}) if custom is not None else ""
    invocation_id = client.post_work(arn, payload, context)
    return client.get_work_result(arn, invocation_id)


def test_thread_worker_answers_with_context_built_like_greengrass(host):
    seen = []

    def handler(event, context):
        seen.append(context)
        return {"Body": event.decode().upper(), "custom": context.client_context.custom}

    with Serving(host, handler):
        out = invoke(host.client(timeout=5), b"hello", {"Content-Type": "image/jpeg"})
    assert out.func_err is None
    assert json.loads(out.payload) == {"Body": "HELLO", "custom": {"Content-Type": "image/jpeg"}}
    context = seen[0]
    assert context.function_name == "GG-ML-INF-object-detection-svc"
    assert context.function_version == "$LATEST"
    assert context.invoked_function_arn == ARN
    assert context.invocation_id == context.aws_request_id and context.invocation_id


def test_results_are_encoded_like_the_greengrass_runtime(host):
    results = {b"bytes": b"\x00raw", b"str": "t\u00e9xt", b"dict": {"a": [1, 2]}, b"none": None}
    with Serving(host, lambda event, context: results[event]):
        client = host.client(timeout=5)
        assert invoke(client, b"bytes").payload == b"\x00raw"
        assert invoke(client, b"str").payload == "t\u00e9xt".encode("utf-8")
        assert json.loads(invoke(client, b"dict").payload) == {"a": [1, 2]}
        assert invoke(client, b"none").payload == b"null"
    assert encode_result(bytearray(b"x")) == b"x"


def test_handler_exceptions_become_handled_errors(host):
    with Serving(host, lambda event, context: {1, 2} if event == b"set" else upper_handler(event, context)):
        client = host.client(timeout=5)
        out = invoke(client, b"raise")
        assert out.func_err == "Handled"
        assert json.loads(out.payload) == {"errorMessage": "not a JPEG or PNG image",
                                           "errorType": "ValueError"}
        out = invoke(client, b"set")
        assert out.func_err == "Handled"
        assert json.loads(out.payload)["errorType"] == "SerializationError"
        # The loop survives its handler's failures.
        assert json.loads(invoke(client, b"fine").payload)["Body"] == "FINE"


def test_undecodable_client_context_is_refused_not_ignored(host):
    not_json = base64.b64encode(b"not json").decode()
    with Serving(host, upper_handler):
        client = host.client(timeout=5)
        with pytest.raises(IPCError) as refused:  # our host refuses it at post_work
            client.post_work(ARN, b"x", not_json)
        assert refused.value.status == 400 and refused.value.error_type == "InvalidClientContext"
        # a core that passes it through: the runtime answers with the same error type
        invocation = host.board.submit(ARN, b"x", not_json, protocol.INVOCATION_REQUEST_RESPONSE,
                                       "caller")
        out = host.board.wait_result(ARN, invocation.invocation_id, "caller")
    assert out.function_error == "Handled"
    assert json.loads(out.result)["errorType"] == "InvalidClientContext"


def test_sdk_sees_handler_failures_as_inference_exceptions(host, monkeypatch):
    monkeypatch.delenv("MY_FUNCTION_ARN", raising=False)
    monkeypatch.delenv("GGC_MAX_INTERFACE_VERSION", raising=False)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", host.token)
    monkeypatch.setenv("GG_DAEMON_PORT", str(host.port))
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    with Serving(host, upper_handler):
        client = ml.client("inference", timeout=5)
        response = client.invoke_inference_service(Body=b"cat", **SDK_ARGS)
        assert response["Body"].read() == b"CAT"
        with pytest.raises(ml.GreengrassInferenceException) as failure:
            client.invoke_inference_service(Body=b"raise", **SDK_ARGS)
    assert str(failure.value) == "not a JPEG or PNG image"


def test_concurrency_polls_in_parallel(host):
    # Each call waits until four handlers run at once: only four parallel workers can answer.
    together = threading.Barrier(4, timeout=5)

    def gathered(event, context):
        together.wait()
        return event

    with Serving(host, gathered, concurrency=4):
        client = host.client(timeout=10)
        ids = [client.post_work(ARN, str(i), "") for i in range(4)]
        outputs = [client.get_work_result(ARN, i) for i in ids]
    assert [o.func_err for o in outputs] == [None] * 4
    assert [o.payload for o in outputs] == [b"0", b"1", b"2", b"3"]


def test_stop_event_ends_a_waiting_loop_promptly(host):
    serving = Serving(host, upper_handler, concurrency=3).__enter__()
    time.sleep(0.3)  # all workers are inside get_work long polls now
    started = time.monotonic()
    serving.__exit__(None, None, None)
    assert time.monotonic() - started < 2.0


def test_loop_waits_for_a_host_that_is_not_up_yet():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = IPCClient(host="127.0.0.1", port=port, token="fn", timeout=5)
    stop = threading.Event()
    worker = threading.Thread(target=run_lambda, args=(ARN, upper_handler, client),
                              kwargs={"stop_event": stop}, daemon=True)
    worker.start()
    time.sleep(0.4)  # a few refused connections, retried with backoff
    late = IPCHost(port=port, token="t", write_client_file=False).start()
    late.register_function(ARN, token="fn", served=False)  # the token a core would have handed out
    try:
        deadline = time.monotonic() + 5
        while not late.board.is_served(ARN) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads(invoke(late.client(timeout=5), b"late").payload)["Body"] == "LATE"
    finally:
        stop.set()
        worker.join(5)
        late.shutdown(grace_s=0.5)
    assert not worker.is_alive()


def test_run_lambda_rejects_zero_concurrency(host):
    with pytest.raises(ValueError):
        run_lambda(ARN, upper_handler, host.client(function_arn=ARN), concurrency=0)


WORKER_SCRIPT = textwrap.dedent("""
    import signal, sys, threading
    sys.path.insert(0, {root!r})
    from connector.ipc import IPCClient, run_lambda

    def handler(event, context):
        if event == b"raise":
            raise RuntimeError("handler in the worker process failed")
        custom = context.client_context.custom
        return {{"Body": event.decode().upper() + "|" + custom.get("Content-Type", "-"),
                 "ContentType": "application/json"}}

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = IPCClient()  # configured from the Lambda environment, as inside Greengrass
    client.initialized({arn!r}, True, "")
    run_lambda({arn!r}, handler, client, stop_event=stop, concurrency=2)
""")


def test_worker_in_a_separate_process_attaches_like_a_lambda(tmp_path, monkeypatch):
    # The owner only gives the function its token, as a core does before it starts a Lambda; the
    # ARN counts as served once the other process attaches through get_work.
    client_file = str(tmp_path / "ipc.json")
    with IPCHost(client_file=client_file, region="eu-west-1", result_timeout_s=5.0) as h:
        token = h.register_function(ARN, served=False)
        assert token != h.token
        env = dict(os.environ, AWS_CONTAINER_AUTHORIZATION_TOKEN=token, GG_DAEMON_PORT=str(h.port),
                   MY_FUNCTION_ARN=ARN, PYTHONPATH=ROOT)
        worker = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT.format(root=ROOT, arn=ARN)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            while not h.board.is_served(ARN) and time.monotonic() < deadline:
                assert worker.poll() is None, worker.stdout.read().decode()
                time.sleep(0.05)
            assert h.initialization(ARN) == {"Success": True, "Response": ""}

            sdk_env = {"GG_ML_IPC_FILE": client_file}
            out = _sdk_in_subprocess(sdk_env, b"from another process")
            assert out == "FROM ANOTHER PROCESS|image/jpeg"
            monkeypatch.delenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", raising=False)
            monkeypatch.delenv("MY_FUNCTION_ARN", raising=False)
            monkeypatch.setenv("GG_ML_IPC_FILE", client_file)
            with pytest.raises(ml.GreengrassInferenceException) as failure:
                ml.client("inference", timeout=5).invoke_inference_service(Body=b"raise", **SDK_ARGS)
            assert str(failure.value) == "handler in the worker process failed"
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(5)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(5)
                pytest.fail("the worker process did not stop on SIGTERM")
        assert worker.returncode == 0, worker.stdout.read().decode()


def _sdk_in_subprocess(env_overrides, body: bytes) -> str:
    """Run the SDK in a clean process with no Greengrass variables: discovery by client file."""
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, {sdk!r})
        import greengrass_machine_learning_sdk as ml
        resp = ml.client("inference", timeout=5).invoke_inference_service(
            AlgoType="object-detection", ServiceName="svc", ContentType="image/jpeg",
            Body={body!r})
        sys.stdout.write(resp["Body"].read().decode())
    """).format(sdk=os.path.join(ROOT, "ml_sdk"), body=body)
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "MY_FUNCTION_ARN", "GG_DAEMON_PORT",
                        "AWS_REGION", "GGC_MAX_INTERFACE_VERSION")}
    env.update(env_overrides)
    result = subprocess.run([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=20)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_ipc_client_reports_failures_with_status(host):
    client = IPCClient(host="127.0.0.1", port=host.port, token="wrong", timeout=5)
    with pytest.raises(IPCError) as refused:
        client.post_work(ARN, b"x")
    assert refused.value.status == 403 and refused.value.error_type == "Forbidden"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with pytest.raises(IPCError) as unreachable:
        IPCClient(host="127.0.0.1", port=free, token="t", timeout=2).post_work(ARN, b"x")
    assert unreachable.value.status is None


def test_ipc_client_from_environment(monkeypatch):
    monkeypatch.setenv("GG_DAEMON_PORT", "8123")
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "tok")
    client = IPCClient()
    assert (client.host, client.port, client.token) == ("localhost", 8123, "tok")
    client = IPCClient.from_environment({})
    assert (client.port, client.token) == (8000, "")
    with pytest.raises(IPCError):
        IPCClient.from_environment({"GG_DAEMON_PORT": "eighty"})
