"""The connector's feeder never waits for the feedback service: a stuck service costs counted drops."""
from connector.feedback.feeder import FeedbackFeeder, feeder_for
from connector.ipc import IPCHost, protocol
from connector.params import parse_parameters
from tests.waiting import wait_until as wait

ARN = protocol.feedback_function_arn("us-east-1")


def test_a_stuck_feedback_service_fills_the_queue_and_further_samples_are_dropped():
    # The host accepts work for MLFeedback (registered) but nobody takes it: every call hangs
    # until the host's result timeout.
    host = IPCHost(port=0, write_client_file=False, result_timeout_s=3).start()
    host.register_function(ARN)
    feeder = FeedbackFeeder(host.client(timeout=10), ARN, "cfg", queue_size=2)
    try:
        feeder.offer(b"first", '{"prediction": []}', "image/png")
        wait(lambda: host.board.pending_count() == 1)  # the feeder's thread is stuck on it
        for i in range(5):
            feeder.offer(b"more", '{"prediction": []}', "image/png")
        assert feeder.counters["feed_dropped"] == 3  # two wait in the queue, three are dropped
        # The stuck call ends with the host's timeout error: counted as failed, feeding goes on.
        wait(lambda: feeder.counters["feed_failed"] >= 1, timeout=15)
    finally:
        host.shutdown(0)
        feeder.close(1)


def test_what_the_feeder_sends_is_the_sdks_publish():
    host = IPCHost(port=0, write_client_file=False).start()
    host.register_function(ARN)
    params = parse_parameters({"MLModelDestinationPath": "/m", "MLModelResourceId": "res-1",
                               "LocalInferenceServiceName": "objectDetection",
                               "LocalInferenceServiceMemoryLimitKB": "1000",
                               "MLFeedbackConnectorConfigId": "cfg-1"})
    feeder = feeder_for(params, host.client(timeout=10), host.region, environ={})
    try:
        feeder.offer(b"jpeg bytes", '{"prediction": [[1, 0.5, 0, 0, 1, 1]]}', "image/jpeg")
        invocation = host.board.take(ARN)
        custom = protocol.decode_client_context(invocation.client_context)["custom"]
        assert invocation.payload == b"jpeg bytes"
        assert custom == {"ConfigId": "cfg-1", "ModelPrediction": {"prediction": [[1, 0.5, 0, 0, 1, 1]]},
                          "Metadata": {"service-name": "objectDetection", "model-resource-id": "res-1",
                                       "content-type": "image/jpeg"}}
        host.board.complete(ARN, invocation.invocation_id, b"null")
        wait(lambda: feeder.counters["fed"] == 1)
        other = feeder_for(params, host.client(), host.region,
                           environ={"GG_ML_FEEDBACK_FUNCTION_ARN": "arn:aws:lambda:r:1:function:Mine:live"})
        assert other.function_arn == "arn:aws:lambda:r:1:function:Mine:live"
        other.close(1)
    finally:
        host.shutdown(0)
        feeder.close(1)
    assert feeder.counters.snapshot() == {"fed": 1, "feed_failed": 0, "feed_dropped": 0}
