"""The host's GGRouter: settings, topic checks, and forwarding to a real mosquitto over TLS with a
client certificate (how a device talks to AWS IoT Core)."""
import base64
import ssl
import subprocess
import sys
import time

import pytest

from connector.errors import ParameterError
from connector.ipc import IPCClient, IPCError, protocol
from connector.ipc.protocol import GGROUTER_ARN as ROUTER_ARN
from connector.standalone.ggrouter.settings import DEFAULT_MAX_QUEUED_BYTES, MqttSettings
from connector.standalone.ggrouter.topics import (PublishPolicy, PublishRefused, check_filter,
                                                  check_topic, filter_matches, topic_of)
from tests.feedback_servers import MOSQUITTO, SAME_USER, free_port, wait_port
from tests.service_process import ROOT, Proc, clean_env, healthz, wait_for_client_file, wait_ready


def test_settings_from_url_options_and_environment(tmp_path):
    s = MqttSettings.from_options("mqtt://broker.local", client_id="cam-1", environ={})
    assert (s.host, s.port, s.tls, s.client_id) == ("broker.local", 1883, False, "cam-1")
    s = MqttSettings.from_options(environ={"GG_MQTT_URL": "mqtts://iot.example:8884",
                                           "GG_MQTT_CLIENT_ID": "thing"})
    assert (s.port, s.tls, s.client_id) == (8884, True, "thing")
    assert MqttSettings.from_options(environ={}) is None
    assert MqttSettings.from_options("mqtts://h", environ={}).port == 8883


@pytest.mark.parametrize("url", ["http://h:1", "mqtt://", "mqtt://h:99999", "mqtt://h/path", "h:1883"])
def test_bad_urls_are_refused_by_name(url):
    with pytest.raises(ParameterError, match="GG_MQTT_URL"):
        MqttSettings.from_options(url, environ={})


def test_certificate_needs_key_and_files_must_exist(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ParameterError, match="needs its key"):
        MqttSettings.from_options("mqtts://h", cert_file=str(cert), environ={})
    with pytest.raises(ParameterError, match="CA file .* does not exist"):
        MqttSettings.from_options("mqtts://h", ca_file=str(tmp_path / "none.pem"), environ={})
    with pytest.raises(ParameterError, match="GG_MQTT_MAX_QUEUED"):
        MqttSettings.from_options("mqtt://h", environ={"GG_MQTT_MAX_QUEUED": "0"})


@pytest.mark.parametrize("topic", [None, "", "a/+/b", "a/#", 5, "x" * 257, "/".join("abcdefghi"),
                                   "a\x00", "a\tb"])
def test_topics_one_cannot_publish_to(topic):
    with pytest.raises(PublishRefused, match="^GGRouter: ") as refused:
        check_topic(topic)
    assert refused.value.status == 400


@pytest.mark.parametrize("document,rule", [
    (b'{"custom": ' + b"[" * 20000 + b"]" * 20000 + b"}", "bad_client_context"),  # past the interpreter's
    (b"[" * 32 + b'{"custom": {"subject": "a/b"}}' + b"]" * 32, "bad_client_context"),  # 33 levels
    (b'{"custom": "' + b"[" * 40000, "bad_client_context"),                # in a string never closed
    (b'{"custom": {"subject": "a\\\\"' + b"[" * 40000 + b"}}", "bad_client_context"),  # \\ ends it
    (b'{"custom": {"subject": "\\"' + b"[" * 40000 + b'"}}', "topic_too_long"),  # \" does not
], ids=["deep", "33-levels", "open-string", "escaped-backslash", "escaped-quote"])
def test_a_deep_or_tricky_client_context_is_refused_by_its_rule_not_by_recursion(document, rule):
    """decode_client_context scans the depth before json.loads, so topic_of needs no
    RecursionError handler: brackets count only outside strings, and a context is refused by a
    rule (here: its depth, or the topic's length when the brackets were in the topic)."""
    context = base64.b64encode(document).decode("ascii")
    assert len(context) <= protocol.MAX_CLIENT_CONTEXT_BYTES
    with pytest.raises(PublishRefused) as refused:
        topic_of(context)
    assert refused.value.rule == rule, refused.value
    assert topic_of(base64.b64encode(b'{"custom": {"subject": "a/b"}}').decode("ascii")) == "a/b"


def test_the_queue_bound_in_bytes_its_default_and_its_floor():
    assert DEFAULT_MAX_QUEUED_BYTES == 16 * 1024 * 1024
    assert MqttSettings.from_options("mqtt://h", environ={}).max_queued_bytes == DEFAULT_MAX_QUEUED_BYTES
    s = MqttSettings.from_options("mqtt://h", environ={"GG_MQTT_MAX_QUEUED_BYTES": "1048576"})
    assert s.max_queued_bytes == 1048576
    # Below one 128 KiB message nothing large could ever be sent.
    for bad in ("131071", "0", "-1", "1e6", "16MiB", "\u00b2"):
        with pytest.raises(ParameterError, match="GG_MQTT_MAX_QUEUED_BYTES=.* must be a whole number of "
                                                 "at least 131072"):
            MqttSettings.from_options("mqtt://h", environ={"GG_MQTT_MAX_QUEUED_BYTES": bad})


@pytest.mark.parametrize("topic_filter, topic, matches", [
    ("a/b", "a/b", True), ("a/b", "a/b/c", False), ("a/+", "a/b", True), ("a/+", "a/b/c", False),
    ("a/+", "a", False), ("a/+", "a/", True), ("+/+", "/x", True), ("a/#", "a", True),
    ("a/#", "a/b/c", True), ("a/#", "ab", False), ("#", "anything/at/all", True),
    ("#", "$aws/things/t/shadow/update", False), ("+/things/#", "$aws/things/t", False),
    ("sport/+/player1", "sport/tennis/player1", True), ("sport/+/player1", "sport/tennis/player2", False),
])
def test_filters_match_by_mqtt_rules(topic_filter, topic, matches):
    assert filter_matches(check_filter(topic_filter), topic) is matches


@pytest.mark.parametrize("topic_filter, rule", [
    ("a/#/b", "'#' must be a whole level and the last one"),
    ("a#", "'#' must be a whole level and the last one"),
    ("a/b+", "'+' must be a whole level"),
    ("$aws/things/#", "'$' topics ($aws/...: shadows, jobs) are never published"),
    ("a\x00", "control character U+0000"),
    ("x" * 257, "257 bytes; AWS IoT allows at most 256"),
    ("/".join("abcdefghi"), "8 '/' separators"),
])
def test_bad_filters_stop_start_up_naming_the_filter_and_the_rule(topic_filter, rule):
    with pytest.raises(ParameterError) as bad:
        MqttSettings.from_options("mqtt://h", environ={}, allow=["ok/#", topic_filter])
    assert str(bad.value).startswith("GG_MQTT_ALLOW / --mqtt-allow filter ") and rule in str(bad.value)
    with pytest.raises(ParameterError, match="GG_MQTT_ALLOW"):  # from the environment, no broker
        MqttSettings.from_options(environ={"GG_MQTT_ALLOW": "ok/#," + topic_filter})


def test_the_allow_list_is_the_environments_then_the_options():
    s = MqttSettings.from_options("mqtt://h", environ={"GG_MQTT_ALLOW": " a/# ,, b/+ ,"},
                                  allow=["c", "a/#"])
    assert s.allow == ("a/#", "b/+", "c")
    assert MqttSettings.from_options("mqtt://h", environ={}).allow == ()


class _Principal:
    def __init__(self, function_arn=None):
        self.function_arn = function_arn


def test_the_policy_grants_by_principal():
    feedback = "arn:aws:lambda:us-east-1:aws:function:MLFeedback"
    policy = PublishPolicy(["cams/#"], {feedback: ("feedback/message/status",)})
    policy.check(_Principal(), "cams/1")
    policy.check(_Principal("arn:aws:lambda:::function:attached"), "cams/1")
    policy.check(_Principal(feedback), "feedback/message/status")
    for principal, topic, rule in ((_Principal(), "feedback/message/status", "not_allowed"),
                                   (_Principal(feedback), "cams/1", "not_allowed"),
                                   (None, "other", "not_allowed"),
                                   (_Principal(feedback), "$aws/things/x/shadow/update", "reserved_topic")):
        with pytest.raises(PublishRefused) as refused:
            policy.check(principal, topic)
        assert refused.value.rule == rule


@pytest.mark.parametrize("command", ["serve", "host"])
def test_a_bad_allow_filter_is_one_line_and_exit_2(tmp_path, command):
    env = clean_env(tmp_path / "ipc.json", GG_MQTT_URL="mqtt://127.0.0.1:1")
    result = subprocess.run([sys.executable, "-m", "connector", command, "--port", "0",
                             "--mqtt-allow", "ok/#", "--mqtt-allow", "a/#/b"], env=env, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        "error: GG_MQTT_ALLOW / --mqtt-allow filter 'a/#/b': '#' must be a whole level and the last "
        "one (a/#)")
    assert not (tmp_path / "ipc.json").exists()


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture()
def tls_broker(tmp_path):
    """mosquitto with TLS that requires a client certificate signed by our CA (as AWS IoT Core)."""
    d = tmp_path
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=test-ca", cwd=d)
    for name, extra in (("server", ["-addext", "subjectAltName=IP:127.0.0.1"]), ("device", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key", "-out", name + ".csr",
                "-subj", "/CN=" + name, *extra, cwd=d)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", name + ".pem", "-days", "2", "-copy_extensions", "copy", cwd=d)
    port = free_port()
    (d / "m.conf").write_text(
        "listener {} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n"
        "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n{u}".format(
            port, d=d, u=SAME_USER))
    proc = subprocess.Popen([MOSQUITTO, "-c", str(d / "m.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    yield port, d
    proc.terminate()
    proc.wait(10)


def tls_subscriber(port, d, with_cert=True):
    import paho.mqtt.client as mqtt
    got = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sub-" + str(with_cert))
    client.tls_set(ca_certs=str(d / "ca.pem"), certfile=str(d / "device.pem") if with_cert else None,
                   keyfile=str(d / "device.key") if with_cert else None)
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe("devices/#", qos=1)
    client.loop_start()
    return client, got


def test_host_forwards_ggrouter_publishes_over_tls_with_a_device_certificate(tmp_path, tls_broker):
    port, d = tls_broker
    try:  # without a certificate the broker lets nobody in
        client, _ = tls_subscriber(port, d, with_cert=False)
        time.sleep(1.0)
        connected = client.is_connected()
        client.loop_stop()
    except (ssl.SSLError, OSError):
        connected = False
    assert not connected
    sub, got = tls_subscriber(port, d)
    time.sleep(0.3)
    ipc = tmp_path / "ipc.json"
    host = Proc(["host", "--port", "0", "--mqtt-url", "mqtts://127.0.0.1:{}".format(port),
                 "--mqtt-ca", str(d / "ca.pem"), "--mqtt-cert", str(d / "device.pem"),
                 "--mqtt-key", str(d / "device.key"), "--mqtt-client-id", "device-1",
                 "--mqtt-allow", "devices/+/hello"],
                clean_env(ipc, GG_MQTT_ALLOW="other/#"), tmp_path / "host.log")
    try:
        info = wait_for_client_file(ipc, host)
        wait_ready(info["port"], host)
        client = IPCClient.from_client_file(str(ipc), timeout=5)
        context = protocol.encode_client_context({"source": "arn:aws:lambda:::function:test",
                                                  "subject": "devices/cam-1/hello", "queueFullPolicy": ""})
        for topic, status in (("devices/cam-1/shadow", 403), ("$aws/things/cam-1/shadow/update", 403),
                              ("devices/" + "x" * 250, 400)):
            forbidden = protocol.encode_client_context({"subject": topic})
            with pytest.raises(IPCError) as refused:
                client.post_work(ROUTER_ARN, b"{}", forbidden, protocol.INVOCATION_EVENT)
            assert refused.value.status == status
        client.post_work(ROUTER_ARN, b'{"hello": 1}', context, protocol.INVOCATION_EVENT)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [("devices/cam-1/hello", b'{"hello": 1}')], host.log()
        # /healthz: nothing without a token (the status only); with it the counters, the
        # allow-list (options after the environment's) and the broker.
        assert healthz(info["port"])[1] == {"status": "ok"}
        mqtt = healthz(info["port"], info["token"])[1]["mqtt"]
        assert mqtt["refused"] == {"bad_client_context": 0, "bad_topic": 0, "topic_too_long": 1,
                                   "topic_too_deep": 0, "reserved_topic": 1, "not_allowed": 1,
                                   "message_too_large": 0, "queue_full": 0}
        assert mqtt["forwarded"] == 1
        assert mqtt["allow"] == ["other/#", "devices/+/hello"]
        assert mqtt["max_queued_bytes"] == 16 * 1024 * 1024 and mqtt["max_queued"] == 10000
    finally:
        sub.loop_stop()
        assert host.stop() == 0, host.log()
    assert "connected to the MQTT broker mqtts://127.0.0.1:{}".format(port) in host.log()


def test_without_a_broker_the_host_does_not_route(tmp_path):
    ipc = tmp_path / "ipc.json"
    host = Proc(["host", "--port", "0"], clean_env(ipc), tmp_path / "host.log")
    try:
        info = wait_for_client_file(ipc, host)
        wait_ready(info["port"], host)
        context = protocol.encode_client_context({"subject": "a/b"})
        with pytest.raises(IPCError) as e:
            IPCClient.from_client_file(str(ipc), timeout=5).post_work(ROUTER_ARN, b"{}", context,
                                                                      protocol.INVOCATION_EVENT)
        assert e.value.status == 404
    finally:
        assert host.stop() == 0
