"""ML Feedback end to end: serve (or host + attached feedback Lambda), the unmodified SDK, a real
mosquitto broker and moto's S3 server with signature checks, outages and a killed process."""
import json
import re
import sys
import time
from pathlib import Path

import pytest

from connector.ipc import protocol
from tests import images
from tests.dlr_fixture.build import RED, blank_image, draw_box
from tests.feedback_servers import Subscriber, free_port
from tests.service_process import (ROOT, Proc, clean_env, healthz, params_file, start_serve,
                                   wait_for_client_file, wait_ready)

sys.path.insert(0, str(ROOT / "ml_sdk"))
import greengrass_machine_learning_sdk as ml  # noqa: E402
from greengrass_machine_learning_sdk.feedback import GreengrassFeedbackException  # noqa: E402

BUCKET = "feedback-bucket"
PREDICTION = "feedback/message/prediction"
STATUS = "feedback/message/status"
FAST_RETRY = {"FeedbackRetryMinSeconds": "0.05", "FeedbackRetryMaxSeconds": "0.3"}
UUID_KEY = r"samples/cam-1/[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}\.png"


@pytest.fixture(scope="module")
def s3(s3_server):
    s3_server.client().create_bucket(Bucket=BUCKET)
    return s3_server


@pytest.fixture()
def subscriber(broker):
    sub = Subscriber(broker)
    yield sub
    sub.close()


def configs(**extra):
    base = {
        "detector": {"s3-bucket-name": BUCKET, "content-type": "image/png", "s3-prefix": "/samples/cam-1/",
                     "file-ext": "png"},
        "never": {"s3-bucket-name": BUCKET, "content-type": "image/png",
                  "sampling-strategy": {"strategy-name": "RANDOM_SAMPLING", "rate": 0}},
        "nobucket": {"s3-bucket-name": "no-such-bucket", "content-type": "image/png"},
        "uncertain": {"s3-bucket-name": BUCKET, "content-type": "image/png",
                      "sampling-strategy": {"strategy-name": "LEAST_CONFIDENCE", "threshold": 0.6}},
    }
    base.update(extra)
    return base


def feedback_file(path: Path, spool: Path, configuration=None, **params) -> Path:
    values = {"FeedbackConfigurationMap": configuration or configs(), "FeedbackSpoolDirectory": str(spool)}
    values.update(FAST_RETRY)
    values.update(params)
    path.write_text(json.dumps(values))
    return path


def red_box_png():
    return images.png(draw_box(blank_image(), RED, 100, 100, 300, 260))


def invoke(body):
    resp = ml.client("inference").invoke_inference_service(
        AlgoType="object-detection", ServiceName="objectDetection", ContentType="image/png", Body=body)
    return json.loads(resp["Body"].read().decode("utf-8"))


def publish(config_id="detector", body=b"\x89PNG\r\n\x1a\n fake image bytes", prediction=None, **metadata):
    ml.client("feedback").publish(ConfigId=config_id, ModelInput=body,
                                  ModelPrediction=prediction or {"prediction": [[0, 0.5, 0.1, 0.1, 0.4, 0.4]]},
                                  Metadata=metadata)


def serve_with_feedback(tmp, model_dir, sdk_env, s3, broker=None, spool=None, config_id="detector",
                        secret=None, **params):
    tmp.mkdir(parents=True, exist_ok=True)
    fb = feedback_file(tmp / "feedback.json", spool or tmp / "spool", **params)
    env = dict(s3.env(secret), MLFeedbackConnectorConfigId=config_id) if config_id else s3.env(secret)
    args = ["--feedback-config", str(fb)] + (["--mqtt-url", broker.url] if broker else [])
    proc, info, env = start_serve(tmp, model_dir, env, extra_args=args)
    sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
    return proc, info


def by_metadata(sub, key, value):
    return [m for m in sub.on(PREDICTION) if m["metadata"].get(key) == value]


def test_connector_and_sdk_samples_reach_s3_and_mqtt(tmp_path, model_dir, sdk_env, s3, broker, subscriber):
    proc, info = serve_with_feedback(tmp_path, model_dir, sdk_env, s3, broker)
    try:
        # The connector feeds every answered request, after the answer.
        answer = invoke(red_box_png())
        assert answer["prediction"], answer
        subscriber.wait_for(lambda s: by_metadata(s, "service-name", "objectDetection"), what="fed sample")
        fed = by_metadata(subscriber, "service-name", "objectDetection")[0]
        assert fed["model-prediction"] == answer and fed["config-id"] == "detector"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", fed["metadata"]["publish-ts"])
        key = fed["source-ref"][len("s3://{}/".format(BUCKET)):]
        assert fed["source-ref"].startswith("s3://{}/".format(BUCKET)) and re.fullmatch(UUID_KEY, key)
        head = s3.client().head_object(Bucket=BUCKET, Key=key)
        assert head["ContentType"] == "image/png"
        assert head["Metadata"] == {"service-name": "objectDetection", "model-resource-id": "fixture-model",
                                    "content-type": "image/png"}
        assert s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == red_box_png()
        subscriber.wait_for(lambda s: fed["id"] in s.statuses(), what="status of the fed sample")
        status = subscriber.statuses()[fed["id"]]
        assert len(status) == 1 and status[0]["status"] == "success"
        assert status[0]["s3_response"]["bucket"] == BUCKET and status[0]["s3_response"]["key"] == key
        assert status[0]["s3_response"]["ETag"]

        # The SDK's own publish, with the request's metadata on the object.
        publish(camera="front")
        subscriber.wait_for(lambda s: by_metadata(s, "camera", "front"), what="SDK sample")
        sample = by_metadata(subscriber, "camera", "front")[0]
        head = s3.client().head_object(Bucket=BUCKET, Key=sample["source-ref"].split("/", 3)[3])
        assert head["Metadata"] == {"camera": "front"}

        # A sample the strategy drops, and one whose bucket does not exist.
        before = len(subscriber.on(STATUS))
        publish("never")
        publish("nobucket")
        subscriber.wait_for(lambda s: len(s.on(STATUS)) >= before + 2, what="two statuses")
        responses = [m["response"] for m in subscriber.on(STATUS)[before:]]
        assert {"status": "sample_dropped_by_strategy"} in responses
        failed = [r for r in responses if r["status"] == "fail"]
        assert len(failed) == 1 and failed[0]["error"] == "NoSuchBucket", responses
        assert "NoSuchBucket" in failed[0]["error_message"]

        # Refusals reach the caller as GreengrassFeedbackException; the service goes on.
        with pytest.raises(GreengrassFeedbackException, match="ConfigId 'unknown' is not in"):
            publish("unknown")
        with pytest.raises(GreengrassFeedbackException, match="Metadata must map"):
            publish(count=3)
        with pytest.raises(GreengrassFeedbackException, match="row 0 must be"):
            ml.client("feedback").publish(ConfigId="uncertain", ModelInput=b"x",
                                          ModelPrediction={"prediction": [["cat"]]})
        with pytest.raises(GreengrassFeedbackException, match="ModelInput is empty"):
            publish(body=b"")
        with pytest.raises(GreengrassFeedbackException, match="printable ASCII"):
            publish(camera="vorn\u00e9")
        publish(camera="after-refusals")
        subscriber.wait_for(lambda s: by_metadata(s, "camera", "after-refusals"), what="sample after refusals")
        # One status per request: every id has exactly one.
        assert all(len(v) == 1 for v in subscriber.statuses().values()), subscriber.statuses()
        status_code, health = healthz(info["port"], info["token"])
        assert health["feedback"]["refused"] == 5 and health["feeder"]["fed"] >= 1
        # A dropped sample's reason is counted with it (the "never" config's strategy).
        assert health["feedback"]["dropped"] == health["feedback"]["sample_dropped_by_strategy"] >= 1, health
        assert health["mqtt"]["forwarded"] >= 1, health  # the broker URL is for authenticated probes only
    finally:
        assert proc.stop() == 0, proc.log()


def test_outage_of_s3_and_broker_loses_nothing(tmp_path, model_dir, sdk_env, s3, broker, subscriber):
    proc, info = serve_with_feedback(tmp_path, model_dir, sdk_env, s3, broker, config_id="")
    try:
        publish(n="warm-up")
        subscriber.wait_for(lambda s: by_metadata(s, "n", "warm-up"), what="warm-up")
        before = set(s3.objects(BUCKET))
        s3.stop()
        broker.stop()
        names = ["outage-{}".format(i) for i in range(5)]
        for name in names:
            publish(n=name)  # accepted while both are away
        time.sleep(0.5)  # a few failed retries
        status, health = healthz(info["port"], info["token"])
        assert health["feedback"]["spooled"] == 5 and health["feedback"]["retries"] >= 1, health
        s3.start()
        broker.start()
        subscriber.wait_for(lambda s: all(by_metadata(s, "n", n) for n in names), timeout=30,
                            what="every sample after the outage")
        ids = [by_metadata(subscriber, "n", n)[0]["id"] for n in names]
        subscriber.wait_for(lambda s: all(i in s.statuses() for i in ids), what="their statuses")
        time.sleep(0.5)  # anything duplicated would arrive now
        for name, request_id in zip(names, ids):
            assert len(by_metadata(subscriber, "n", name)) == 1
            assert [r["status"] for r in subscriber.statuses()[request_id]] == ["success"]
        assert len(set(s3.objects(BUCKET)) - before) == 5
    finally:
        if s3.server is None:
            s3.start()
        assert proc.stop() == 0, proc.log()


def test_killed_serve_delivers_its_spool_after_restart(tmp_path, model_dir, sdk_env, s3, broker, subscriber):
    spool = tmp_path / "spool"
    proc, _ = serve_with_feedback(tmp_path / "first", model_dir, sdk_env, s3, broker, spool=spool,
                                  config_id="")
    before = set(s3.objects(BUCKET))
    s3.stop()
    try:
        names = ["killed-{}".format(i) for i in range(3)]
        for name in names:
            publish(n=name)
        assert len(list(spool.glob("*.json"))) == 3 and len(list(spool.glob("*.bin"))) == 3
        proc.popen.kill()  # no goodbye: what is on disk must be enough
        proc.popen.wait(10)
        assert not subscriber.on(PREDICTION)
    finally:
        s3.start()
    proc, _ = serve_with_feedback(tmp_path / "second", model_dir, sdk_env, s3, broker, spool=spool,
                                  config_id="")
    try:
        subscriber.wait_for(lambda s: all(by_metadata(s, "n", n) for n in names), timeout=30,
                            what="spooled samples after the restart")
        ids = [by_metadata(subscriber, "n", n)[0]["id"] for n in names]
        subscriber.wait_for(lambda s: all(i in s.statuses() for i in ids), what="their statuses")
        assert len(set(s3.objects(BUCKET)) - before) == 3
        assert not list(spool.glob("*.json")) and not list(spool.glob("*.bin"))
    finally:
        assert proc.stop() == 0, proc.log()


def start_host_and_feedback(tmp, sdk_env, env_extra, broker=None, **params):
    """The other two ways: a bare host (with GGRouter) and the feedback Lambda attached to it."""
    ipc = tmp / "ipc.json"
    env = clean_env(ipc, **env_extra)
    # The host gives the feedback function its own token, which `feedback` finds beside the
    # client file (issue 9: only a function's own token may take its work).
    arn = protocol.feedback_function_arn(env.get("AWS_REGION") or "us-east-1")
    host = Proc(["host", "--port", "0", "--function", arn] + (["--mqtt-url", broker.url] if broker else []),
                env, tmp / "host.log")
    port = wait_for_client_file(ipc, host)["port"]
    wait_ready(port, host)
    fb = feedback_file(tmp / "feedback.json", tmp / "spool", **params)
    lam = Proc(["feedback", "--config", str(fb)], env, tmp / "feedback.log")
    sdk_env.setenv("GG_ML_IPC_FILE", str(ipc))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until the attached Lambda serves the MLFeedback address
        try:
            publish("never")
            break
        except ml.GreengrassDependencyException:
            assert lam.popen.poll() is None, lam.log()
            time.sleep(0.1)
    # The probe is a request too: let it leave the queue and the spool first, or on a loaded machine
    # it still holds a RequestLimit of 1 when the test's own first publish arrives.
    while list((tmp / "spool").glob("*.json")) and time.monotonic() < deadline + 20:
        time.sleep(0.05)
    return host, lam


def test_attached_feedback_lambda_queue_full_and_wrong_secret(tmp_path, sdk_env, s3, broker, subscriber):
    # The wrong secret: moto checks the signature, so the upload fails permanently.
    with pytest.raises(Exception, match="SignatureDoesNotMatch"):
        s3.client(secret="wrong").put_object(Bucket=BUCKET, Key="x", Body=b"x")
    host, lam = start_host_and_feedback(tmp_path, sdk_env, s3.env(secret="wrong"), broker, RequestLimit="1")
    try:
        publish(n="bad-secret")
        subscriber.wait_for(lambda s: any(r[0].get("error") == "SignatureDoesNotMatch"
                                          for r in s.statuses().values()), what="SignatureDoesNotMatch")
        assert not by_metadata(subscriber, "n", "bad-secret")  # no prediction message for a failure
    finally:
        lam.stop()
        host.stop()
    # RequestLimit 1 and an S3 endpoint that is down: the first request waits in the queue, the
    # second gets the original's throttling status and the caller an exception.
    (tmp_path / "b").mkdir()
    down = dict(s3.env(), AWS_ENDPOINT_URL_S3="http://127.0.0.1:{}".format(free_port()))
    host, lam = start_host_and_feedback(tmp_path / "b", sdk_env, down, broker, RequestLimit="1")
    try:
        publish(n="waits")
        before = len(subscriber.on(STATUS))
        with pytest.raises(GreengrassFeedbackException,
                           match=re.escape("Request limit has been reached (max request: 1 ). Dropping request.")):
            publish(n="throttled")
        subscriber.wait_for(lambda s: len(s.on(STATUS)) > before, what="throttling status")
        assert subscriber.on(STATUS)[before]["response"] == {
            "status": "fail", "error": "Queue.Full",
            "error_message": "Request limit has been reached (max request: 1 ). Dropping request."}
    finally:
        lam.stop()
        host.stop()


def test_full_spool_refuses_with_a_status(tmp_path, sdk_env, s3, broker, subscriber):
    down = dict(s3.env(), AWS_ENDPOINT_URL_S3="http://127.0.0.1:{}".format(free_port()))
    host, lam = start_host_and_feedback(tmp_path, sdk_env, down, broker, FeedbackSpoolMaxItems="2")
    try:
        publish(n="one")  # the start-up probe's dropped sample may still be in the spool
        time.sleep(0.3)
        before = len(subscriber.on(STATUS))
        with pytest.raises(GreengrassFeedbackException, match="spool is full"):
            for i in range(3):
                publish(n="fill-{}".format(i))
        subscriber.wait_for(lambda s: any(m["response"].get("error") == "SpoolFull" for m in s.on(STATUS)[before:]),
                            what="SpoolFull status")
    finally:
        lam.stop()
        host.stop()


def test_local_directory_needs_no_aws_and_no_broker(tmp_path, model_dir, sdk_env):
    out = tmp_path / "samples"
    local = {"local": {"local-directory": str(out), "content-type": "image/png", "s3-prefix": "cam",
                       "file-ext": "png"}}
    fb = feedback_file(tmp_path / "feedback.json", tmp_path / "spool", configuration=local)
    proc, info, env = start_serve(tmp_path, model_dir, {"MLFeedbackConnectorConfigId": "local"},
                                  extra_args=["--feedback-config", str(fb)])
    sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
    try:
        answer = invoke(red_box_png())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not list(out.glob("cam/*.png.json")):
            time.sleep(0.05)
        sidecars = list(out.glob("cam/*.png.json"))
        assert len(sidecars) == 1, proc.log()
        image = Path(str(sidecars[0])[:-len(".json")])
        assert image.read_bytes() == red_box_png()
        sidecar = json.loads(sidecars[0].read_text())
        assert sidecar["model-prediction"] == answer and sidecar["config-id"] == "local"
        assert sidecar["metadata"]["service-name"] == "objectDetection" and sidecar["time"]
        deadline = time.monotonic() + 5
        while healthz(info["port"], info["token"])[1]["feedback"]["delivered"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        health = healthz(info["port"], info["token"])[1]["feedback"]
        assert health["delivered"] == 1 and health["mqtt_skipped"] == 2  # prediction + status
    finally:
        assert proc.stop() == 0, proc.log()


def test_missing_feedback_service_costs_a_counter_and_one_log_line(tmp_path, model_dir, sdk_env):
    proc, info, env = start_serve(tmp_path, model_dir, {"MLFeedbackConnectorConfigId": "nowhere"})
    sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
    try:
        for _ in range(4):
            assert invoke(red_box_png())["prediction"]
        deadline = time.monotonic() + 10
        while healthz(info["port"], info["token"])[1]["feeder"]["feed_failed"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert healthz(info["port"], info["token"])[1]["feeder"] == {"fed": 0, "feed_failed": 4, "feed_dropped": 0}
    finally:
        assert proc.stop() == 0, proc.log()
    lines = [l for l in proc.log().splitlines() if "did not take a sample" in l]
    assert len(lines) == 1 and "MLFeedback" in lines[0], proc.log()


@pytest.mark.parametrize("configuration, message", [
    ({"cam-1": {"s3-bucket-name": "UPPER", "content-type": "image/png"}},
     "FeedbackConfigurationMap config 'cam-1': key 's3-bucket-name' = 'UPPER' must be a string matching"),
    ({"cam-1": {"s3-bucket-name": "bucket", "content-type": "image/png",
                "sampling-strategy": {"strategy-name": "MARGIN", "threshold": 2}}},
     "key 'sampling-strategy.threshold' = 2 must be a number between 0 and 1"),
    # 50 KB of brackets, under the file's 64 KiB cap: refused before json.loads could recurse.
    ("[" * 50000, "FeedbackConfigurationMap is nested deeper than 32 levels"),
])
def test_a_bad_feedback_config_stops_serve_with_one_message(tmp_path, model_dir, configuration, message):
    fb = feedback_file(tmp_path / "feedback.json", tmp_path / "spool", configuration=configuration)
    env = clean_env(tmp_path / "ipc.json")
    cfg = params_file(tmp_path / "params.json", model_dir)
    proc = Proc(["serve", "--config", str(cfg), "--port", "0", "--feedback-config", str(fb)], env,
                tmp_path / "serve.log")
    assert proc.popen.wait(30) == 2
    proc.stop()
    log = proc.log()
    assert message in log and "Traceback" not in log, log
    assert not (tmp_path / "ipc.json").exists()  # nothing was started
