"""The host's GGRouter is as strict as a Greengrass core: who may publish what is decided by the
host from the authenticated principal (never the client context's `source`), against a real
mosquitto; AWS IoT's limits; the queue bounded in messages and bytes while the broker is away."""
import base64
import json
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from connector.feedback.destinations import TransientError
from connector.feedback.publisher import PREDICTION_TOPIC, STATUS_TOPIC, RouterPublisher
from connector.ipc import IPCClient, IPCError, IPCHost, protocol
from connector.ipc.protocol import GGROUTER_ARN as ROUTER_ARN
from connector.standalone.ggrouter.forwarder import RouterRunner
from connector.standalone.ggrouter.settings import MqttSettings
from connector.standalone.ggrouter.topics import MAX_MESSAGE_BYTES
from tests.waiting import wait_until as wait
from tests.service_process import ROOT, Proc, clean_env, healthz, wait_for_client_file, wait_ready

REGION = "us-east-1"
FEEDBACK = protocol.feedback_function_arn(REGION)
ATTACHED = "arn:aws:lambda:us-east-1:123456789012:function:attached"
GRANTS = {FEEDBACK: ("feedback/message/prediction", "feedback/message/status")}


class Everything:
    """A persistent-session subscriber of every topic, `$aws/...` included (mosquitto's `#` does
    not match `$` topics, so they get their own subscription)."""

    def __init__(self, broker):
        import paho.mqtt.client as mqtt
        self.messages = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="everything",
                                  clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([("#", 1), ("$aws/#", 1)])
        self.client.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert subscribed.wait(10), "subscription not acknowledged"

    def _on_message(self, _c, _u, message):
        with self._lock:
            self.messages.append((message.topic, message.payload))

    def topics(self):
        with self._lock:
            return [t for t, _ in self.messages]

    def wait_for(self, topic, count=1, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.topics().count(topic) >= count:
                return
            time.sleep(0.02)
        raise AssertionError("{} x {} not received; got {}".format(count, topic, self.topics()))

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture()
def everything(broker):
    sub = Everything(broker)
    yield sub
    sub.close()


@pytest.fixture()
def routed(broker):
    """start(allow=..., environ=...) -> (host, router): an in-process host whose GGRouter forwards
    to the broker, with the MLFeedback function granted its two topics."""
    made = []

    def start(allow=(), environ=None):
        settings = MqttSettings.from_options(broker.url, client_id="ggrouter-test",
                                             environ=environ or {}, allow=allow)
        host = IPCHost(port=0, write_client_file=False, region=REGION, result_timeout_s=10).start()
        router = RouterRunner(host, settings, grants=GRANTS)
        made.append((host, router))
        return host, router

    yield start
    for host, router in made:
        host.shutdown(0)
        router.close()


def publish(client, topic, payload=b"{}", source=None):
    """What greengrasssdk's iot-data publish posts (the source is whatever the sender claims)."""
    context = protocol.encode_client_context(
        {"source": source or "arn:aws:lambda:::function:anything", "subject": topic,
         "queueFullPolicy": ""})
    return client.post_work(ROUTER_ARN, payload, context, protocol.INVOCATION_EVENT)


def refusal(client, topic, payload=b"{}", **kwargs):
    with pytest.raises(IPCError) as refused:
        publish(client, topic, payload, **kwargs)
    return refused.value


def test_callers_publish_nothing_by_default(routed, everything):
    host, router = routed()
    caller = host.client(timeout=5)
    # The caller claims to be the feedback function in `source`; the host knows better.
    for topic in ("$aws/things/my-thing/shadow/update", "feedback/message/status", "devices/cam-1"):
        error = refusal(caller, topic, source=FEEDBACK)
        assert error.status == 403, error
    error = refusal(caller, "feedback/message/status", source=FEEDBACK)
    assert error.error_type == "TopicNotAllowed"
    assert "a caller may not publish to 'feedback/message/status'" in str(error)
    assert "the allow-list is empty" in str(error) and "--mqtt-allow" in str(error)
    # The feedback function's own token publishes its topics: the path to the broker works, and
    # nothing refused got there before it (one client, QoS 1: in order).
    publish(host.client(timeout=5, function_arn=FEEDBACK), "feedback/message/status", b'{"id": 1}')
    everything.wait_for("feedback/message/status")
    assert everything.messages == [("feedback/message/status", b'{"id": 1}')]
    health = router.describe()
    assert (health["refused"]["not_allowed"], health["refused"]["reserved_topic"]) == (3, 1)
    assert health["forwarded"] == 1


def test_an_allow_listed_filter_lets_callers_publish(routed, everything):
    host, router = routed(allow=["devices/+/hello"], environ={"GG_MQTT_ALLOW": "logs/#, other"})
    caller = host.client(timeout=5)
    attached = host.client(timeout=5, function_arn=ATTACHED)  # an attached function: the same list
    publish(caller, "devices/cam-1/hello", b"hi")
    publish(attached, "logs", b"parent level of logs/#")
    publish(caller, "logs/a/b", b"deep")
    publish(caller, "other", b"exact")
    for topic in ("devices/cam-1/x/hello", "devices/hello", "otherwise", "log"):
        error = refusal(caller, topic)
        assert (error.status, error.error_type) == (403, "TopicNotAllowed"), topic
        assert "logs/#, other, devices/+/hello" in str(error)
    # A function given topics publishes those and no others, the allow-list notwithstanding.
    error = refusal(host.client(timeout=5, function_arn=FEEDBACK), "devices/cam-1/hello")
    assert error.status == 403 and "publishes only feedback/message/prediction" in str(error)
    everything.wait_for("other")
    assert everything.messages == [("devices/cam-1/hello", b"hi"), ("logs", b"parent level of logs/#"),
                                   ("logs/a/b", b"deep"), ("other", b"exact")]
    assert router.describe()["allow"] == ["logs/#", "other", "devices/+/hello"]


def test_dollar_topics_are_never_published_even_with_everything_allowed(routed, everything):
    host, router = routed(allow=["#", "+/things/#"])
    for client in (host.client(timeout=5), host.client(timeout=5, function_arn=FEEDBACK),
                   host.client(timeout=5, function_arn=ATTACHED)):
        for topic in ("$aws/things/my-thing/shadow/update", "$aws/things/t/jobs/j/update", "$SYS/x",
                      "$"):
            error = refusal(client, topic)
            assert (error.status, error.error_type) == (403, "ReservedTopic"), topic
            assert "starts with '$'" in str(error)
    publish(host.client(timeout=5), "after/the/refusals", b"x")
    everything.wait_for("after/the/refusals")
    assert everything.topics() == ["after/the/refusals"]
    assert router.describe()["refused"]["reserved_topic"] == 12


@pytest.mark.parametrize("topic, rule, error_type", [
    ("a" * 257, "257 bytes; AWS IoT allows at most 256", "TopicTooLong"),
    ("\u00e9" * 129, "258 bytes; AWS IoT allows at most 256", "TopicTooLong"),
    ("/".join("abcdefghi"), "8 '/' separators; AWS IoT allows at most 7 (8 levels)", "TopicTooDeep"),
    ("a/+/b", "wildcard '+'", "InvalidTopic"),
    ("a/#", "wildcard '#'", "InvalidTopic"),
    ("a\x00b", "control character U+0000", "InvalidTopic"),
    ("a\nb", "control character U+000A", "InvalidTopic"),
    ("a\x7fb", "control character U+007F", "InvalidTopic"),
    ("a\u0085b", "control character U+0085", "InvalidTopic"),
    ("\ud800", "not valid UTF-8", "InvalidTopic"),
    ("", "the topic is empty", "InvalidTopic"),
    (None, "must name the topic in custom.subject", "InvalidTopic"),
    (["a"], "must name the topic in custom.subject (a string; got list)", "InvalidTopic"),
])
def test_topics_against_aws_iot_rules_are_400_naming_the_rule(routed, topic, rule, error_type):
    host, router = routed(allow=["#"])
    error = refusal(host.client(timeout=5), topic)
    assert (error.status, error.error_type) == (400, error_type)
    assert rule in str(error) and "400 Bad Request: GGRouter: " in str(error)
    assert len(str(error)) < 400  # a long topic is quoted as an excerpt


def test_topic_and_message_at_the_limits_pass_one_byte_more_does_not(routed, everything):
    host, router = routed(allow=["#"])
    caller = host.client(timeout=5)
    longest, deepest = "t" * 256, "/".join("abcdefgh")
    publish(caller, longest)
    publish(caller, deepest)
    publish(caller, "big", b"x" * MAX_MESSAGE_BYTES)
    error = refusal(caller, "big", b"x" * (MAX_MESSAGE_BYTES + 1))
    assert (error.status, error.error_type) == (413, "MessageTooLarge")
    assert "131073 bytes is over AWS IoT's limit of 131072 bytes (128 KiB)" in str(error)
    # What was reported today: 8 MiB on a 1000-character topic.
    error = refusal(caller, "t" * 1000, b"x" * (8 << 20))
    assert error.status == 400 and "1000 bytes" in str(error)
    error = refusal(caller, "eight/mebibytes", b"x" * (8 << 20))
    assert error.status == 413
    everything.wait_for("big")
    assert everything.topics() == [longest, deepest, "big"]
    assert len(everything.messages[2][1]) == MAX_MESSAGE_BYTES
    refused = router.describe()["refused"]
    assert (refused["message_too_large"], refused["topic_too_long"]) == (2, 1)


def test_a_client_context_that_is_not_json_is_400(routed):
    host, router = routed(allow=["#"])
    bad = base64.b64encode(b"not json").decode()
    with pytest.raises(IPCError) as refused:
        host.client(timeout=5).post_work(ROUTER_ARN, b"{}", bad, protocol.INVOCATION_EVENT)
    assert (refused.value.status, refused.value.error_type) == (400, "InvalidClientContext")
    no_custom = base64.b64encode(b'{"custom": 5}').decode()
    with pytest.raises(IPCError) as refused:
        host.client(timeout=5).post_work(ROUTER_ARN, b"{}", no_custom, protocol.INVOCATION_EVENT)
    assert refused.value.status == 400 and "custom.subject" in str(refused.value)
    deep = base64.b64encode(b"[" * 40000).decode()  # 53 KB: within the host's header limit
    with pytest.raises(IPCError) as refused:
        host.client(timeout=5).post_work(ROUTER_ARN, b"{}", deep, protocol.INVOCATION_EVENT)
    assert (refused.value.status, refused.value.error_type) == (400, "InvalidClientContext")
    assert "nested deeper than 32 levels" in str(refused.value)
    # Both were refused by the host itself, which checks every client context at post_work,
    # before the router's admission hook sees it.
    assert router.describe()["refused"]["bad_client_context"] == 0


def core_sdk_publish(host, token, topic, payload):
    """greengrasssdk's iot-data publish, as its IPC client sends it (urllib, GG_DAEMON_PORT,
    AWS_CONTAINER_AUTHORIZATION_TOKEN, MY_FUNCTION_ARN as the source, an Event)."""
    context = base64.b64encode(json.dumps({"custom": {
        "source": ATTACHED, "subject": topic, "queueFullPolicy": ""}}).encode())
    request = urllib.request.Request(
        "http://localhost:{}/2016-11-01/functions/{}".format(host.port, ROUTER_ARN), data=payload,
        headers={"X-Amz-Client-Context": context, "X-Amz-Invocation-Type": "Event",
                 "Authorization": token}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


def test_the_unmodified_core_sdk_path_is_refused_unless_allow_listed(routed, everything):
    strict, _ = routed()
    function_token = strict.register_function(ATTACHED, served=False)
    for token in (strict.token, function_token):
        with pytest.raises(urllib.error.HTTPError) as refused:
            core_sdk_publish(strict, token, "sensors/cam-1/temperature", b'{"c": 21}')
        assert refused.value.code == 403
        assert json.loads(refused.value.read())["errorType"] == "TopicNotAllowed"
    granted, _ = routed(allow=["sensors/+/temperature"])
    function_token = granted.register_function(ATTACHED, served=False)
    assert core_sdk_publish(granted, granted.token, "sensors/cam-1/temperature", b'{"c": 21}') == 202
    assert core_sdk_publish(granted, function_token, "sensors/cam-2/temperature", b'{"c": 22}') == 202
    everything.wait_for("sensors/cam-2/temperature")
    assert everything.messages == [("sensors/cam-1/temperature", b'{"c": 21}'),
                                   ("sensors/cam-2/temperature", b'{"c": 22}')]


def test_the_queue_is_bounded_in_bytes_while_the_broker_is_away(routed, broker, everything):
    limit = 8 * MAX_MESSAGE_BYTES  # 1 MiB: eight of the largest messages
    host, router = routed(allow=["queued/#"], environ={"GG_MQTT_MAX_QUEUED_BYTES": str(limit)})
    caller = host.client(timeout=5)
    publish(caller, "queued/warm-up")
    everything.wait_for("queued/warm-up")
    broker.stop()
    for i in range(8):
        publish(caller, "queued/{}".format(i), bytes([i]) * MAX_MESSAGE_BYTES)
    wait(lambda: router.forwarder.unacknowledged == 8)  # the router has handed all eight to paho
    for _ in range(3):
        error = refusal(caller, "queued/one-too-many", b"x")
        assert (error.status, error.error_type) == (429, "TooManyRequestsException")
        assert "8 message(s) holding 1048576 bytes wait for the broker" in str(error)
        assert "GG_MQTT_MAX_QUEUED_BYTES=1048576" in str(error) and "retry later" in str(error)
    health = router.describe()
    assert (health["unacknowledged"], health["unacknowledged_bytes"]) == (8, limit)
    assert health["refused"]["queue_full"] == 3 and health["max_queued_bytes"] == limit
    broker.start()
    for i in range(8):
        everything.wait_for("queued/{}".format(i), timeout=60)
    wait(lambda: router.forwarder.describe()["unacknowledged_bytes"] == 0, timeout=30)
    publish(caller, "queued/after")  # room again
    everything.wait_for("queued/after")
    assert "queued/one-too-many" not in everything.topics()
    assert [p for t, p in everything.messages if t == "queued/3"] == [b"\x03" * MAX_MESSAGE_BYTES]


def test_the_queue_is_bounded_in_messages_too(routed, broker):
    host, router = routed(allow=["#"], environ={"GG_MQTT_MAX_QUEUED": "3"})
    broker.stop()
    caller = host.client(timeout=5)
    for i in range(3):
        publish(caller, "n/{}".format(i), b"small")
    wait(lambda: router.forwarder.unacknowledged == 3)
    error = refusal(caller, "n/3", b"small")
    assert error.status == 429 and "GG_MQTT_MAX_QUEUED=3" in str(error)


def test_the_feedback_publisher_skips_what_the_router_refuses_for_good(routed, broker, everything):
    """A refusal that every retry would meet again must not hold the spool up: skipped, counted;
    a full queue (429) is transient and the request stays in the spool."""
    host, router = routed(environ={"GG_MQTT_MAX_QUEUED": "1"})
    publisher = RouterPublisher(host.client(timeout=5, function_arn=FEEDBACK), FEEDBACK)
    assert publisher.publish(STATUS_TOPIC, {"id": "ok"}) is True
    everything.wait_for(STATUS_TOPIC)
    assert publisher.publish(STATUS_TOPIC, {"id": "x" * MAX_MESSAGE_BYTES}) is False  # 413
    assert publisher.publish("feedback/message/other", {"id": "y"}) is False  # 403
    assert publisher.skipped == 2
    # The callers' token is refused for good too (403 TopicNotAllowed), not retried forever.
    assert RouterPublisher(host.client(timeout=5), FEEDBACK).publish(STATUS_TOPIC, {"id": "z"}) is False
    broker.stop()
    assert publisher.publish(PREDICTION_TOPIC, {"id": "waits"}) is True
    wait(lambda: router.forwarder.unacknowledged == 1)
    with pytest.raises(TransientError, match="429"):
        publisher.publish(PREDICTION_TOPIC, {"id": "queue full"})
    assert publisher.skipped == 2


# -- the real processes: `host` with the broker away, and the attached `feedback` command -------

def resident_kb(pid):
    with open("/proc/{}/status".format(pid)) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for {}".format(pid))


def start_host(tmp_path, broker, *args, **env):
    ipc = tmp_path / "ipc.json"
    host = Proc(["host", "--port", "0", "--mqtt-url", broker.url, *args], clean_env(ipc, **env),
                tmp_path / "host.log")
    info = wait_for_client_file(ipc, host)
    wait_ready(info["port"], host)
    return host, info, ipc


def test_memory_stays_bounded_while_the_broker_is_away(tmp_path, broker):
    """40 posts of 8 MiB took `serve` from 91 to 410 MB; now 600 of the largest message (75 MiB)
    leave 16 MiB waiting and the rest is refused with 429."""
    host, info, ipc = start_host(tmp_path, broker, "--mqtt-allow", "load/#")
    try:
        client = IPCClient.from_client_file(str(ipc), timeout=10)
        publish(client, "load/warm-up", b"w" * MAX_MESSAGE_BYTES)
        wait(lambda: healthz(info["port"], info["token"])[1]["mqtt"]["forwarded"] == 1)
        wait(lambda: healthz(info["port"], info["token"])[1]["mqtt"]["unacknowledged"] == 0)
        broker.stop()
        before = resident_kb(host.popen.pid)
        statuses = []
        for i in range(600):
            try:
                publish(client, "load/{}".format(i), bytes([i % 256]) * MAX_MESSAGE_BYTES)
                statuses.append(202)
            except IPCError as error:
                assert (error.status, error.error_type) == (429, "TooManyRequestsException"), error
                statuses.append(429)
        wait(lambda: healthz(info["port"], info["token"])[1]["mqtt"]["refused"]["queue_full"] + 128 == 600)
        grown_mb = (resident_kb(host.popen.pid) - before) / 1024
        mqtt = healthz(info["port"], info["token"])[1]["mqtt"]
        assert (mqtt["unacknowledged"], mqtt["unacknowledged_bytes"]) == (128, 16 * 1024 * 1024)
        assert statuses[:128] == [202] * 128 and statuses.count(429) >= 600 - 128 - 8
        assert grown_mb < 16 + 24, "resident memory grew by {:.0f} MB".format(grown_mb)
        assert healthz(info["port"])[0] == 200
    finally:
        assert host.stop() == 0, host.log()


def test_the_attached_feedback_command_publishes_with_its_own_token(tmp_path, broker, everything,
                                                                      sdk_env):
    sys.path.insert(0, str(ROOT / "ml_sdk"))
    import greengrass_machine_learning_sdk as ml
    host, info, ipc = start_host(tmp_path, broker, "--function", FEEDBACK)
    config = tmp_path / "feedback.json"
    config.write_text(json.dumps({
        "FeedbackConfigurationMap": {"local": {"local-directory": str(tmp_path / "samples"),
                                               "content-type": "image/png"}},
        "FeedbackSpoolDirectory": str(tmp_path / "spool"), "FeedbackRetryMinSeconds": "0.05",
        "FeedbackRetryMaxSeconds": "0.3"}))
    lam = Proc(["feedback", "--config", str(config)], clean_env(ipc), tmp_path / "feedback.log")
    sdk_env.setenv("GG_ML_IPC_FILE", str(ipc))
    try:
        deadline = time.monotonic() + 30
        while True:  # until the attached Lambda serves the MLFeedback address
            try:
                ml.client("feedback").publish(ConfigId="local", ModelInput=b"\x89PNG\r\n\x1a\n png bytes",
                                              ModelPrediction={"prediction": [[0, 0.5, 0, 0, 1, 1]]},
                                              Metadata={"n": "attached"})
                break
            except ml.GreengrassDependencyException:
                assert lam.popen.poll() is None and time.monotonic() < deadline, lam.log()
                time.sleep(0.1)
        everything.wait_for("feedback/message/status")
        everything.wait_for("feedback/message/prediction")
        prediction = json.loads(dict(everything.messages)["feedback/message/prediction"])
        assert prediction["metadata"]["n"] == "attached"
        mqtt = healthz(info["port"], info["token"])[1]["mqtt"]
        assert mqtt["forwarded"] == 2 and not any(mqtt["refused"].values()), mqtt
        # The callers' token cannot forge the feedback service's status on the same host.
        error = refusal(IPCClient.from_client_file(str(ipc), timeout=5), "feedback/message/status",
                        source=FEEDBACK)
        assert error.status == 403
    finally:
        lam.stop()
        assert host.stop() == 0, host.log()
