"""The host's GGRouter: settings, topic checks, and forwarding to a real mosquitto over TLS with a
client certificate (how a device talks to AWS IoT Core)."""
import ssl
import subprocess
import time

import pytest

from connector.errors import ParameterError
from connector.ipc import IPCClient, IPCError, protocol
from connector.mqtt_router import ROUTER_ARN, MqttSettings, check_topic
from tests.feedback_servers import MOSQUITTO, SAME_USER, free_port, wait_port
from tests.service_process import Proc, clean_env, wait_for_client_file, wait_ready


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


@pytest.mark.parametrize("topic", [None, "", "a/+/b", "a/#", 5])
def test_topics_one_cannot_publish_to(topic):
    with pytest.raises(ValueError, match="GGRouter"):
        check_topic(topic)


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
                 "--mqtt-key", str(d / "device.key"), "--mqtt-client-id", "device-1"],
                clean_env(ipc), tmp_path / "host.log")
    try:
        info = wait_for_client_file(ipc, host)
        wait_ready(info["port"], host)
        client = IPCClient.from_client_file(str(ipc), timeout=5)
        context = protocol.encode_client_context({"source": "arn:aws:lambda:::function:test",
                                                  "subject": "devices/cam-1/hello", "queueFullPolicy": ""})
        client.post_work(ROUTER_ARN, b'{"hello": 1}', context, protocol.INVOCATION_EVENT)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [("devices/cam-1/hello", b'{"hello": 1}')], host.log()
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
