"""The standalone host's GGRouter: what a Greengrass core does with a Lambda's MQTT publish.

Inside Greengrass V1 a function publishes by posting work to ``arn:aws:lambda:::function:GGRouter``
with client context ``{"custom": {"source", "subject": <topic>, "queueFullPolicy"}}`` and the
message as the body; the core routes it by its subscriptions. The standalone host has no
subscriptions: it serves that ARN with :class:`MqttForwarder`, which forwards every message to one
configured broker (QoS 1), so the same publishing code works in all three places.

Broker settings: ``--mqtt-url`` / ``GG_MQTT_URL`` (``mqtt://HOST[:1883]`` or ``mqtts://HOST[:8883]``),
``--mqtt-client-id`` / ``GG_MQTT_CLIENT_ID``, and for TLS ``--mqtt-ca`` / ``GG_MQTT_CA_FILE``,
``--mqtt-cert`` / ``GG_MQTT_CERT_FILE``, ``--mqtt-key`` / ``GG_MQTT_KEY_FILE`` (AWS IoT Core: its
ATS endpoint on 8883, the Amazon root CA and the device certificate and key, with a client id the
device's policy allows). While the broker is away, messages wait in memory (up to
``GG_MQTT_MAX_QUEUED``, default 10000) and go out after the reconnection; paho reconnects with a
backoff of up to 30 s.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Set
from urllib.parse import urlsplit

from .errors import ParameterError

log = logging.getLogger("connector.mqtt_router")

ROUTER_ARN = "arn:aws:lambda:::function:GGRouter"

ENV_URL = "GG_MQTT_URL"
ENV_CLIENT_ID = "GG_MQTT_CLIENT_ID"
ENV_CA = "GG_MQTT_CA_FILE"
ENV_CERT = "GG_MQTT_CERT_FILE"
ENV_KEY = "GG_MQTT_KEY_FILE"
ENV_MAX_QUEUED = "GG_MQTT_MAX_QUEUED"

DEFAULT_MAX_QUEUED = 10000
_FLUSH_S = 3.0


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    tls: bool
    client_id: str
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    max_queued: int = DEFAULT_MAX_QUEUED

    @classmethod
    def from_options(cls, url: Optional[str] = None, client_id: Optional[str] = None,
                     ca_file: Optional[str] = None, cert_file: Optional[str] = None,
                     key_file: Optional[str] = None, environ: Optional[Mapping[str, str]] = None
                     ) -> Optional["MqttSettings"]:
        """Options win over the environment; None when no broker URL is given anywhere."""
        env = os.environ if environ is None else environ
        url = url or env.get(ENV_URL) or ""
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/"):
            raise ParameterError("{} / --mqtt-url {!r} must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
                                 .format(ENV_URL, url))
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise ParameterError("{} / --mqtt-url {!r} has a bad port".format(ENV_URL, url)) from None
        cert = cert_file or env.get(ENV_CERT) or None
        key = key_file or env.get(ENV_KEY) or None
        if bool(cert) != bool(key):
            raise ParameterError("an MQTT client certificate needs its key and the key its certificate "
                                 "(--mqtt-cert/{} and --mqtt-key/{})".format(ENV_CERT, ENV_KEY))
        ca = ca_file or env.get(ENV_CA) or None
        for what, path in (("CA file", ca), ("certificate", cert), ("key", key)):
            if path and not os.path.isfile(path):
                raise ParameterError("MQTT {} {!r} does not exist".format(what, path))
        queued = env.get(ENV_MAX_QUEUED) or str(DEFAULT_MAX_QUEUED)
        if not queued.isdigit() or int(queued) < 1:
            raise ParameterError("{}={!r} must be a positive whole number".format(ENV_MAX_QUEUED, queued))
        return cls(host=parts.hostname, port=port, tls=parts.scheme == "mqtts" or bool(ca or cert),
                   client_id=client_id or env.get(ENV_CLIENT_ID) or "greengrass-ml-{}-{}".format(
                       socket.gethostname(), os.getpid()),
                   ca_file=ca, cert_file=cert, key_file=key, max_queued=int(queued))

    @property
    def url(self) -> str:
        return "{}://{}:{}".format("mqtts" if self.tls else "mqtt", self.host, self.port)


def check_topic(topic: Any) -> str:
    if not isinstance(topic, str) or not topic:
        raise ValueError("GGRouter: the client context must name the topic in custom.subject")
    if "+" in topic or "#" in topic or "\0" in topic or len(topic.encode("utf-8")) > 65535:
        raise ValueError("GGRouter: {!r} is not a topic one can publish to (no wildcards)".format(topic))
    return topic


def _paho_client(client_id: str) -> Any:
    import paho.mqtt.client as mqtt
    version = getattr(mqtt, "CallbackAPIVersion", None)  # paho 2.x; 1.x has no such argument
    if version is not None:
        return mqtt.Client(version.VERSION1, client_id=client_id)
    return mqtt.Client(client_id=client_id)


class MqttForwarder(object):
    """Serves GGRouter: each invocation's body is published to its ``subject`` topic, QoS 1."""

    def __init__(self, settings: MqttSettings) -> None:
        import paho.mqtt.client as mqtt
        self.settings = settings
        self._mqtt = mqtt
        self.forwarded = 0
        self.refused = 0
        self._unacked: Set[int] = set()
        self._acked_early: Set[int] = set()
        self._lock = threading.Lock()
        client = _paho_client(settings.client_id)
        client.max_queued_messages_set(settings.max_queued)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        if settings.tls:
            client.tls_set(ca_certs=settings.ca_file, certfile=settings.cert_file,
                           keyfile=settings.key_file)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        client.connect_async(settings.host, settings.port, keepalive=30)
        client.loop_start()
        log.info("GGRouter forwards to %s as client id %s", settings.url, settings.client_id)

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, rc: Any, *_: Any) -> None:
        if rc == 0:
            log.info("connected to the MQTT broker %s", self.settings.url)
        else:
            log.warning("the MQTT broker %s refused the connection: %s", self.settings.url,
                        self._mqtt.connack_string(rc) if isinstance(rc, int) else rc)

    def _on_disconnect(self, _client: Any, _userdata: Any, rc: Any, *_: Any) -> None:
        if rc:
            log.warning("lost the MQTT broker %s (%s); messages wait in memory until it is back",
                        self.settings.url, rc)

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, *_: Any) -> None:
        with self._lock:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:  # acknowledged before handle() recorded it
                self._acked_early.add(mid)

    @property
    def unacknowledged(self) -> int:
        with self._lock:
            return len(self._unacked)

    def handle(self, event: bytes, context: Any) -> None:
        custom = getattr(getattr(context, "client_context", None), "custom", None) or {}
        topic = check_topic(custom.get("subject"))
        # Not under self._lock: paho's network thread holds its own lock while it calls
        # _on_publish, which takes ours.
        info = self._client.publish(topic, bytes(event or b""), qos=1)
        with self._lock:
            if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
                self.refused += 1
                raise RuntimeError("GGRouter: {} messages already wait for the broker {}; message "
                                   "to {} dropped".format(self.settings.max_queued, self.settings.url,
                                                          topic))
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
            else:
                self._unacked.add(info.mid)
            self.forwarded += 1

    def close(self, flush_s: float = _FLUSH_S) -> None:
        """Give unacknowledged messages a moment to leave, then disconnect."""
        deadline = time.monotonic() + flush_s
        while self.unacknowledged and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.unacknowledged:
            log.warning("%d MQTT message(s) to %s were not acknowledged at shutdown",
                        self.unacknowledged, self.settings.url)
        self._client.disconnect()
        self._client.loop_stop()


class RouterRunner(object):
    """The forwarder served as GGRouter on a host, through the host's board in this process."""

    def __init__(self, host: Any, settings: MqttSettings) -> None:
        from .ipc import run_lambda

        self.forwarder = MqttForwarder(settings)
        self._stop = threading.Event()
        host.register_function(ROUTER_ARN)
        self._thread = threading.Thread(
            target=run_lambda, name="ggrouter",
            args=(ROUTER_ARN, self.forwarder.handle, host.function_client(ROUTER_ARN)),
            kwargs={"stop_event": self._stop, "concurrency": 1}, daemon=True)
        self._thread.start()

    def describe(self) -> Dict[str, Any]:
        return {"mqtt": self.forwarder.settings.url, "forwarded": self.forwarder.forwarded,
                "unacknowledged": self.forwarder.unacknowledged}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.forwarder.close()
