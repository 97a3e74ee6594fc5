"""GGRouter's forwarder: each admitted publish goes to the configured broker (QoS 1).

Inside Greengrass V1 a function publishes by posting work to ``arn:aws:lambda:::function:GGRouter``
with client context ``{"custom": {"source", "subject": <topic>, "queueFullPolicy"}}`` and the
message as the body; the core routes it by the group's subscriptions. The standalone host serves
that ARN with :class:`RouterRunner`, as strict as a core: every post_work is judged by
:meth:`RouterRunner.admit`, the host's admission hook, from the principal the host authenticated
(the token's owner; never the client context's ``source``, which anybody can write), by the rules
of :mod:`.topics`. A refusal is the caller's answer to its post_work (400, 403, 413, 429), counted
by rule (``/healthz`` ``mqtt.refused``).

Messages not yet acknowledged by the broker (all of them while it is away) wait in memory within
the bounds of :mod:`.settings` and go out after the reconnection; paho reconnects with a backoff
of up to 30 s.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Set

from ...feedback.ratelog import RateLimitedLog
from ...ipc import protocol
from ...ipc.runtime import LambdaThread
from .settings import ENV_MAX_QUEUED, ENV_MAX_QUEUED_BYTES, MqttSettings
from .topics import RULES, PublishPolicy, PublishRefused, check_message, check_topic, topic_of

log = logging.getLogger("connector.standalone.ggrouter")

ROUTER_ARN = protocol.GGROUTER_ARN
_FLUSH_S = 3.0


def _paho_client(client_id: str) -> Any:
    import paho.mqtt.client as mqtt
    version = getattr(mqtt, "CallbackAPIVersion", None)  # paho 2.x; 1.x has no such argument
    if version is not None:
        return mqtt.Client(version.VERSION1, client_id=client_id)
    return mqtt.Client(client_id=client_id)


class MqttForwarder(object):
    """Serves GGRouter: each invocation's body is published to its ``subject`` topic, QoS 1.

    Bounded: messages the broker has not acknowledged are counted and their bytes summed; one
    more beyond ``max_queued`` or ``max_queued_bytes`` is refused (:meth:`check_room`)."""

    def __init__(self, settings: MqttSettings) -> None:
        import paho.mqtt.client as mqtt
        self.settings = settings
        self._mqtt = mqtt
        self.forwarded = 0
        self.refused: Dict[str, int] = dict.fromkeys(RULES, 0)
        self._unacked: Dict[int, int] = {}  # message id -> payload bytes
        self._unacked_bytes = 0
        self._acked_early: Set[int] = set()
        self._lock = threading.Lock()
        self._ratelog = RateLimitedLog(log)
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
                self._unacked_bytes -= self._unacked.pop(mid)
            else:  # acknowledged before handle() recorded it
                self._acked_early.add(mid)

    @property
    def unacknowledged(self) -> int:
        with self._lock:
            return len(self._unacked)

    def count(self, refusal: PublishRefused) -> None:
        with self._lock:
            self.refused[refusal.rule] += 1

    def check_room(self, size: int) -> None:
        """PublishRefused (429) when a message of `size` bytes would go over a queue bound."""
        with self._lock:
            count, held = len(self._unacked), self._unacked_bytes
        if count >= self.settings.max_queued or held + size > self.settings.max_queued_bytes:
            raise PublishRefused("queue_full", "{} message(s) holding {} bytes wait for the broker "
                                               "(limits: {}={}, {}={}); retry later".format(
                                                   count, held, ENV_MAX_QUEUED, self.settings.max_queued,
                                                   ENV_MAX_QUEUED_BYTES, self.settings.max_queued_bytes))

    def handle(self, event: bytes, context: Any) -> None:
        custom = getattr(getattr(context, "client_context", None), "custom", None) or {}
        payload = bytes(event or b"")
        try:
            # Admission judged this already; checked again because the queue may have filled
            # between admission and now (only this handler adds to it: concurrency 1).
            topic = check_topic(custom.get("subject"))
            check_message(payload)
            self.check_room(len(payload))
        except PublishRefused as refusal:
            self.count(refusal)
            self._ratelog.warning(refusal.rule, "%s (dropped after admission)", refusal)
            raise
        # Not under self._lock: paho's network thread holds its own lock while it calls
        # _on_publish, which takes ours.
        info = self._client.publish(topic, payload, qos=1)
        with self._lock:
            if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:  # paho's own bound, as a second fence
                self.refused["queue_full"] += 1
                raise RuntimeError("GGRouter: paho's queue is full; message to {} dropped".format(topic))
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
            else:
                self._unacked[info.mid] = len(payload)
                self._unacked_bytes += len(payload)
            self.forwarded += 1

    def describe(self) -> Dict[str, Any]:
        settings = self.settings
        with self._lock:
            return {"mqtt": settings.url, "forwarded": self.forwarded,
                    "unacknowledged": len(self._unacked), "unacknowledged_bytes": self._unacked_bytes,
                    "max_queued": settings.max_queued, "max_queued_bytes": settings.max_queued_bytes,
                    "refused": dict(self.refused)}

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
    """The forwarder served as GGRouter on a host, through the host's board in this process, with
    :meth:`admit` as the host's admission hook for it."""

    def __init__(self, host: Any, settings: MqttSettings,
                 grants: Optional[Mapping[str, Sequence[str]]] = None) -> None:
        """:param grants: function ARN -> the topics it publishes (see :class:`PublishPolicy`)."""
        self.policy = PublishPolicy(settings.allow, grants)
        self.forwarder = MqttForwarder(settings)
        host.register_function(ROUTER_ARN, admit=self.admit)
        self._loop = LambdaThread(ROUTER_ARN, self.forwarder.handle, host.function_client(ROUTER_ARN),
                                  name="ggrouter", daemon=True)
        if self.policy.allow:
            log.info("GGRouter: callers may publish to topics matching %s", ", ".join(self.policy.allow))

    def admit(self, principal: Any, client_context: str, payload: bytes) -> None:
        """The host's admission hook: return to queue the publish, PublishRefused to refuse it."""
        try:
            topic = topic_of(client_context)
            self.policy.check(principal, topic)
            check_message(payload)
            self.forwarder.check_room(len(payload))
        except PublishRefused as refusal:
            self.forwarder.count(refusal)
            log.debug("%s refused: %s", getattr(principal, "name", "?"), refusal)
            raise

    def describe(self) -> Dict[str, Any]:
        """``/healthz`` ``mqtt``: the forwarder's counters and bounds, the allow-list, and the
        publishes refused, by rule (:data:`RULES`)."""
        return dict(self.forwarder.describe(), allow=list(self.policy.allow))

    def close(self) -> None:
        self._loop.stop(timeout_s=5)
        self.forwarder.close()
