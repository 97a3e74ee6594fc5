"""The feedback service in process: retries, resuming a half-delivered sample, eviction and expiry.

Real parts only: our IPC host plays the core (its GGRouter function records what is published),
moto's S3 server checks signatures, the spool is on disk.
"""
import contextlib
import json
import threading
from pathlib import Path
import time

import pytest

from connector.feedback import config as fc
from connector.feedback.destinations import S3Destination, s3_client_factory
from connector.feedback.publisher import RouterPublisher
from connector.feedback.collector import FeedbackService, SpoolFullError
from connector.feedback.spool import Spool
from connector.ipc import run_lambda
from tests.waiting import wait_until as wait

BUCKET = "service-bucket"
PNG = b"\x89PNG\r\n\x1a\n not a whole image, but a PNG's signature"
SAMPLE = "0f3d2c1b-aaaa-4bbb-8ccc-0123456789ab"
DOC = {"prediction": [[1, 0.9, 0.1, 0.1, 0.2, 0.2]]}


@pytest.fixture(scope="module")
def s3(s3_server):
    s3_server.client().create_bucket(Bucket=BUCKET)
    return s3_server


def service(tmp_path, host, s3, monkeypatch, **params):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    values = {"FeedbackConfigurationMap": {"c1": {"s3-bucket-name": BUCKET, "content-type": "image/png",
                                                  "s3-prefix": "svc"}},
              "FeedbackSpoolDirectory": str(tmp_path / "spool"), "FeedbackRetryMinSeconds": "0.02",
              "FeedbackRetryMaxSeconds": "0.1"}
    values.update(params)
    p = fc.parse_parameters(values, environ={})
    return FeedbackService(p, RouterPublisher(host.client(timeout=5), "test-source"),
                           s3=S3Destination(s3_client_factory())).start()


def accept(svc, request_id):
    svc.accept(PNG, {"ConfigId": "c1", "ModelPrediction": DOC}, request_id)


def statuses(published):
    return [d for t, d in published if t == "feedback/message/status"]


@contextlib.contextmanager
def s3_down(s3):
    s3.stop()
    try:
        yield
    finally:
        s3.start()


def test_transient_failure_is_retried_with_capped_backoff_until_it_succeeds(tmp_path, router, s3, monkeypatch):
    host, published = router
    with s3_down(s3):
        svc = service(tmp_path, host, s3, monkeypatch)
        accept(svc, "req-1")
        wait(lambda: svc.counters["retries"] >= 6)  # 0.02, 0.04, 0.08, 0.1, 0.1, ...: capped, no limit
        assert statuses(published) == [] and len(svc.spool) == 1
    try:
        wait(lambda: statuses(published))
        assert [s["response"]["status"] for s in statuses(published)] == ["success"]
        # Removed from the spool and counted just after its status goes out.
        wait(lambda: len(svc.spool) == 0 and svc.counters["delivered"] == 1)
    finally:
        svc.close()


def test_a_restart_does_not_repeat_a_finished_upload(tmp_path, router, s3, monkeypatch):
    host, published = router
    spool = Spool(str(tmp_path / "spool"), 10 ** 6, 10, 3600, "reject-new")
    spool.add({"id": "half-done", "config-id": "c1", "accepted": time.time(), "kept": True,
               "verdict": "kept", "prediction": DOC, "metadata": {}, "sample": SAMPLE,
               "s3_response": {"ETag": "\"from-the-first-run\"", "bucket": BUCKET, "key": "svc/" + SAMPLE}},
              PNG)
    before = s3.objects(BUCKET)
    svc = service(tmp_path, host, s3, monkeypatch)
    try:
        wait(lambda: statuses(published))
        assert s3.objects(BUCKET) == before  # no second upload
        response = statuses(published)[0]["response"]
        assert response["s3_response"]["ETag"] == "\"from-the-first-run\""
        prediction = [d for t, d in published if t == "feedback/message/prediction"]
        assert prediction[0]["source-ref"] == "s3://{}/svc/{}".format(BUCKET, SAMPLE)
    finally:
        svc.close()


def test_drop_oldest_evicts_with_a_fail_status(tmp_path, router, s3, monkeypatch):
    host, published = router
    svc = service(tmp_path, host, s3, monkeypatch, FeedbackSpoolMaxItems="3",
                  FeedbackSpoolFullPolicy="drop-oldest")
    try:
        with s3_down(s3):
            for i in range(4):
                accept(svc, "req-{}".format(i))
            wait(lambda: statuses(published))
            evicted = statuses(published)[0]
            assert evicted["response"]["error"] == "SpoolFull" and "drop-oldest" in evicted["response"]["error_message"]
            assert len(svc.spool) == 3
        wait(lambda: len(statuses(published)) == 4)
        # Every request has exactly one status: the evicted one never gets a second (the entry
        # being delivered is never evicted), the others succeed once the server is back.
        by_id = {}
        for s in statuses(published):
            by_id.setdefault(s["id"], []).append(s["response"]["status"])
        assert sorted(by_id) == ["req-0", "req-1", "req-2", "req-3"]
        assert sorted(v[0] for v in by_id.values()) == ["fail", "success", "success", "success"]
        assert all(len(v) == 1 for v in by_id.values()), by_id
        time.sleep(0.3)
        assert len(statuses(published)) == 4
    finally:
        svc.close()


def test_reject_new_and_expiry(tmp_path, router, s3, monkeypatch):
    host, published = router
    svc = service(tmp_path, host, s3, monkeypatch, FeedbackSpoolMaxItems="1",
                  FeedbackSpoolMaxAgeSeconds="1")
    try:
        with s3_down(s3):
            accept(svc, "old")
            with pytest.raises(SpoolFullError, match="spool is full"):
                accept(svc, "refused")
            wait(lambda: len(statuses(published)) == 2, timeout=5)
            by_id = {s["id"]: s["response"] for s in statuses(published)}
            assert by_id["refused"]["error"] == "SpoolFull"
            assert by_id["old"]["error"] == "Expired"
            assert "FeedbackSpoolMaxAgeSeconds=1" in by_id["old"]["error_message"]
            assert len(svc.spool) == 0
    finally:
        svc.close()


def test_the_lambda_module_bootstraps_from_the_greengrass_environment(tmp_path, router, s3, monkeypatch):
    """What a Greengrass runtime does: import the handler module with the parameters in the
    environment, then call function_handler per request; the SDK's publish reaches it."""
    import sys

    from connector.feedback import lambda_function
    host, published = router
    config = {"c1": {"s3-bucket-name": BUCKET, "content-type": "image/png",
                     "conditions": {"classes": [7]}}}
    env = dict(s3.env(), FeedbackConfigurationMap=json.dumps(config),
               FeedbackSpoolDirectory=str(tmp_path / "spool"), AWS_REGION="eu-west-1",
               MY_FUNCTION_ARN="arn:aws:lambda:eu-west-1:123456789012:function:MLFeedbackService:1",
               AWS_CONTAINER_AUTHORIZATION_TOKEN=host.token, GG_DAEMON_PORT=str(host.port))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    svc = lambda_function.bootstrap()
    arn = "arn:aws:lambda:eu-west-1:aws:function:MLFeedback"
    host.register_function(arn)
    stop = threading.Event()
    loop = threading.Thread(target=run_lambda, args=(arn, lambda_function.function_handler,
                                                     host.client(function_arn=arn)),
                            kwargs={"stop_event": stop}, daemon=True)
    loop.start()
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ml_sdk"))
        import greengrass_machine_learning_sdk as ml
        client = ml.client("feedback")
        client.publish(ConfigId="c1", ModelInput=PNG, ModelPrediction={"prediction": [[7, 0.5, 0, 0, 1, 1]]},
                       Metadata={"n": "kept"})
        client.publish(ConfigId="c1", ModelInput=PNG, ModelPrediction={"prediction": [[3, 0.5, 0, 0, 1, 1]]})
        with pytest.raises(ml.GreengrassFeedbackException, match="row 0"):
            client.publish(ConfigId="c1", ModelInput=PNG, ModelPrediction={"prediction": [[3]]})
        wait(lambda: len(statuses(published)) == 2)
        assert sorted(s["response"]["status"] for s in statuses(published)) == [
            "sample_dropped_by_condition", "success"]
        source = {t: d for t, d in published}["feedback/message/prediction"]
        assert source["metadata"]["n"] == "kept"
        # MQTT went through GGRouter with the function's own ARN as the source.
        assert svc.publisher.source_arn == env["MY_FUNCTION_ARN"]
    finally:
        stop.set()
        loop.join(5)
        svc.close()
        lambda_function.use_service(None)


def test_a_poison_entry_fails_once_and_does_not_block_the_queue(tmp_path, router, s3, monkeypatch):
    host, published = router
    spool = Spool(str(tmp_path / "spool"), 10 ** 6, 10, 3600, "reject-new")
    # Records damaged on disk: kept, but without their sample (no key or file name can be built).
    # They are quarantined at start-up; each request gets one fail status; the queue goes on.
    for request_id, config_id in (("poison-s3", "c1"), ("poison-local", "l1")):
        spool.add({"id": request_id, "config-id": config_id, "accepted": time.time(), "kept": True,
                   "verdict": "kept", "prediction": DOC, "metadata": {}, "key": None}, b"image")
    configs = {"c1": {"s3-bucket-name": BUCKET, "content-type": "image/png"},
               "l1": {"local-directory": str(tmp_path / "out"), "content-type": "image/png"}}
    svc = service(tmp_path, host, s3, monkeypatch, FeedbackConfigurationMap=configs)
    try:
        accept(svc, "after")
        wait(lambda: len(statuses(published)) == 3)
        by_id = {s["id"]: s["response"] for s in statuses(published)}
        for poison in ("poison-s3", "poison-local"):
            assert (by_id[poison]["status"], by_id[poison]["error"]) == ("fail", "Quarantined")
            assert "'sample' is not a uuid4" in by_id[poison]["error_message"]
        assert by_id["after"]["status"] == "success"
        assert svc.describe()["quarantined"] == 2
        assert len(list((tmp_path / "spool" / "quarantine").glob("*.json"))) == 2
    finally:
        svc.close()
