"""GGRouter's rules hold on the fast path too (issue 20, point 4): a frame posting to GGRouter is
judged by the same admission hook, from the principal its token is, against a real mosquitto."""
import base64
import json
import threading
import time

import pytest

from connector.ipc import IPCHost, protocol
from connector.ipc.fast import frames
from connector.ipc.protocol import GGROUTER_ARN as ROUTER_ARN
from connector.standalone.ggrouter.forwarder import RouterRunner
from connector.standalone.ggrouter.settings import MqttSettings
from tests.fast_client import FastConnection, error_of
from tests.feedback_servers import Broker

REGION = "us-east-1"
FEEDBACK = protocol.feedback_function_arn(REGION)


def publish_context(topic, source=FEEDBACK):
    return base64.b64encode(json.dumps({"custom": {"source": source, "subject": topic,
                                                   "queueFullPolicy": ""}}).encode())


@pytest.fixture()
def routed(tmp_path):
    broker = Broker(tmp_path).start()
    made = []

    def start(allow=()):
        settings = MqttSettings.from_options(broker.url, client_id="ggrouter-fast", environ={},
                                             allow=allow)
        host = IPCHost(client_file=str(tmp_path / "ipc.json"), region=REGION, result_timeout_s=10).start()
        router = RouterRunner(host, settings, grants={FEEDBACK: ("feedback/message/status",)})
        made.append((host, router))
        return host, router

    yield start, broker
    for host, router in made:
        host.shutdown(0)
        router.close()
    broker.close()


def subscribe(broker, topic):
    import paho.mqtt.client as mqtt
    got, subscribed = [], threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watcher")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe([(topic, 1), ("$aws/#", 1)])
    client.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert subscribed.wait(10)
    return client, got


def test_callers_publish_nothing_over_the_fast_path_by_default(routed):
    start, broker = routed
    host, router = start()
    watcher, got = subscribe(broker, "#")
    try:
        with FastConnection(host.fast_path) as connection:
            for topic, rule in (("feedback/message/status", "TopicNotAllowed"),
                                ("devices/cam-1", "TopicNotAllowed"),
                                ("$aws/things/t/shadow/update", "ReservedTopic")):
                # The caller claims to be the feedback function; its token says it is a caller.
                answer = connection.invoke(host.token, ROUTER_ARN, b"{}", context=publish_context(topic))
                assert (answer.call, answer.status, answer.error_type) == (
                    frames.CALL_POST_WORK, 403, rule), answer
                if rule == "TopicNotAllowed":
                    assert "a caller may not publish" in error_of(answer)["errorMessage"]
            # The feedback function's own token, over the same path, publishes its topic.
            fn_token = host.function_token(FEEDBACK) or host.register_function(FEEDBACK)
            answer = connection.invoke(fn_token, ROUTER_ARN, b'{"id": 1}',
                                       context=publish_context("feedback/message/status"))
            assert answer.status == 200, answer
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # anything refused that had slipped through would have arrived by now
        assert got == [("feedback/message/status", b'{"id": 1}')]
        assert router.describe()["refused"]["not_allowed"] == 2
        assert router.describe()["refused"]["reserved_topic"] == 1
    finally:
        watcher.loop_stop()
        watcher.disconnect()


def test_an_allow_listed_topic_is_published_over_the_fast_path_and_the_limits_hold(routed):
    start, broker = routed
    host, router = start(allow=["devices/+/hello"])
    watcher, got = subscribe(broker, "devices/#")
    try:
        with FastConnection(host.fast_path) as connection:
            ok = connection.invoke(host.token, ROUTER_ARN, b"hi", context=publish_context("devices/cam/hello"))
            assert ok.status == 200
            big = connection.invoke(host.token, ROUTER_ARN, b"m" * (128 * 1024 + 1),
                                    context=publish_context("devices/cam/hello"))
            assert (big.status, big.error_type) == (413, "MessageTooLarge")
            bad = connection.invoke(host.token, ROUTER_ARN, b"x", context=publish_context("devices/+/hello"))
            assert (bad.status, bad.error_type) == (400, "InvalidTopic")
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got == [("devices/cam/hello", b"hi")]
    finally:
        watcher.loop_stop()
        watcher.disconnect()
