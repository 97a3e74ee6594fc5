"""The standalone host's GGRouter: what a Greengrass core does with a Lambda's MQTT publish.

Inside Greengrass V1 a function publishes by posting work to ``arn:aws:lambda:::function:GGRouter``
with client context ``{"custom": {"source", "subject": <topic>, "queueFullPolicy"}}`` and the
message as the body; the core routes it by the group's subscriptions. The standalone host serves
that ARN with :class:`MqttForwarder`, which forwards to one configured broker (QoS 1), so the same
publishing code works in all three places, and it is as strict as a core: every post_work is
judged by :meth:`RouterRunner.admit`, the host's admission hook, from the principal the host
authenticated (the token's owner; never the client context's ``source``, which anybody can write):

* a function given topics (``grants``: the ML Feedback function and its two topics) publishes
  exactly those;
* every other principal (callers holding the client file's token, attached functions) publishes
  only topics matching the operator's allow-list of MQTT topic filters (``--mqtt-allow FILTER``,
  repeatable, added to ``GG_MQTT_ALLOW``, comma-separated; ``+`` and ``#`` as in MQTT). The
  default list is empty: callers publish nothing;
* ``$`` topics (``$aws/things/.../shadow/update``, jobs, ...) are never published;
* AWS IoT's limits: a topic of 1 to 256 bytes of UTF-8, at most 7 ``/`` (8 levels), no wildcard,
  no control character; a message of at most 128 KiB.

A refusal is the caller's answer to its post_work: 400 (a bad topic), 403 (not allowed, ``$``),
413 (too large), 429 (the broker's queue is full), with a message naming the rule, counted by
rule in :meth:`RouterRunner.describe` (``/healthz`` ``mqtt.refused``).

Broker settings: ``--mqtt-url`` / ``GG_MQTT_URL`` (``mqtt://HOST[:1883]`` or ``mqtts://HOST[:8883]``),
``--mqtt-client-id`` / ``GG_MQTT_CLIENT_ID``, and for TLS ``--mqtt-ca`` / ``GG_MQTT_CA_FILE``,
``--mqtt-cert`` / ``GG_MQTT_CERT_FILE``, ``--mqtt-key`` / ``GG_MQTT_KEY_FILE`` (AWS IoT Core: its
ATS endpoint on 8883, the Amazon root CA and the device certificate and key, with a client id the
device's policy allows). Messages not yet acknowledged by the broker (all of them while it is
away) wait in memory, at most ``GG_MQTT_MAX_QUEUED`` (default 10000) messages holding at most
``GG_MQTT_MAX_QUEUED_BYTES`` (default 16 MiB) of payload, and go out after the reconnection; paho
reconnects with a backoff of up to 30 s.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Set, Tuple
from urllib.parse import urlsplit

from .errors import ParameterError
from .feedback.ratelog import RateLimitedLog
from .ipc import protocol
from .ipc.workboard import NotAdmitted

log = logging.getLogger("connector.mqtt_router")

ROUTER_ARN = "arn:aws:lambda:::function:GGRouter"

ENV_URL = "GG_MQTT_URL"
ENV_CLIENT_ID = "GG_MQTT_CLIENT_ID"
ENV_CA = "GG_MQTT_CA_FILE"
ENV_CERT = "GG_MQTT_CERT_FILE"
ENV_KEY = "GG_MQTT_KEY_FILE"
ENV_MAX_QUEUED = "GG_MQTT_MAX_QUEUED"
ENV_MAX_QUEUED_BYTES = "GG_MQTT_MAX_QUEUED_BYTES"
ENV_ALLOW = "GG_MQTT_ALLOW"

DEFAULT_MAX_QUEUED = 10000
DEFAULT_MAX_QUEUED_BYTES = 16 * 1024 * 1024
_FLUSH_S = 3.0

# AWS IoT Core's limits (a device publishing more is disconnected or refused there).
MAX_TOPIC_BYTES = 256
MAX_TOPIC_SLASHES = 7
MAX_MESSAGE_BYTES = 128 * 1024

# The rules a publish can break: counter name -> (status, errorType).
RULES = {
    "bad_client_context": (400, "InvalidClientContext"),
    "bad_topic": (400, "InvalidTopic"),
    "topic_too_long": (400, "TopicTooLong"),
    "topic_too_deep": (400, "TopicTooDeep"),
    "reserved_topic": (403, "ReservedTopic"),
    "not_allowed": (403, "TopicNotAllowed"),
    "message_too_large": (413, "MessageTooLarge"),
    "queue_full": (429, "TooManyRequestsException"),
}


class PublishRefused(NotAdmitted):
    """A publish GGRouter refuses: `rule` is one of :data:`RULES`, `why` the reason alone."""

    def __init__(self, rule: str, why: str) -> None:
        status, error_type = RULES[rule]
        super().__init__("GGRouter: " + why, status, error_type)
        self.rule, self.why = rule, why


def _excerpt(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _shape_problem(text: str, what: str) -> Optional[PublishRefused]:
    """What is wrong with `text` (a topic or a filter) by AWS IoT's size, depth and character rules."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return PublishRefused("bad_topic", "{} {} is not valid UTF-8 (a lone surrogate)".format(
            what, _excerpt(text)))
    if not text:
        return PublishRefused("bad_topic", "the {} is empty".format(what))
    if size > MAX_TOPIC_BYTES:
        return PublishRefused("topic_too_long", "{} {} has {} bytes; AWS IoT allows at most {} bytes of "
                                                "UTF-8".format(what, _excerpt(text), size, MAX_TOPIC_BYTES))
    slashes = text.count("/")
    if slashes > MAX_TOPIC_SLASHES:
        return PublishRefused("topic_too_deep", "{} {} has {} '/' separators; AWS IoT allows at most {} "
                                                "({} levels)".format(what, _excerpt(text), slashes,
                                                                     MAX_TOPIC_SLASHES, MAX_TOPIC_SLASHES + 1))
    control = next((c for c in text if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F), None)
    if control is not None:
        return PublishRefused("bad_topic", "{} {} contains the control character U+{:04X}; topics are "
                                           "printable UTF-8".format(what, _excerpt(text), ord(control)))
    return None


def check_topic(topic: Any) -> str:
    """`topic` when one may publish to it under AWS IoT's rules; PublishRefused (400) otherwise."""
    if not isinstance(topic, str):
        raise PublishRefused("bad_topic", "the client context must name the topic in custom.subject "
                                          "(a string; got {})".format(
                                              "none" if topic is None else type(topic).__name__))
    problem = _shape_problem(topic, "topic")
    if problem is not None:
        raise problem
    for wildcard in ("+", "#"):
        if wildcard in topic:
            raise PublishRefused("bad_topic", "topic {} contains the wildcard {!r}; publish to a topic "
                                              "name, not a filter".format(_excerpt(topic), wildcard))
    return topic


def _filter_problem(topic_filter: str) -> Optional[str]:
    problem = _shape_problem(topic_filter, "filter")
    if problem is not None:
        return problem.why
    if topic_filter.startswith("$"):
        return "'$' topics ($aws/...: shadows, jobs) are never published through the host's GGRouter"
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' must be a whole level and the last one (a/#)"
        if "+" in level and level != "+":
            return "'+' must be a whole level (a/+/b)"
    return None


def check_filter(topic_filter: str) -> str:
    """An allow-list entry, checked by MQTT's filter rules and AWS IoT's limits; ParameterError
    naming the filter and the rule otherwise."""
    why = _filter_problem(topic_filter)
    if why is not None:
        raise ParameterError("{} / --mqtt-allow filter {}: {}".format(ENV_ALLOW, _excerpt(topic_filter),
                                                                      why))
    return topic_filter


def filter_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching: '+' is one whole level, a final '#' the parent level and everything below;
    a filter starting with a wildcard never matches a '$' topic."""
    if topic.startswith("$") and not topic_filter.startswith("$"):
        return False
    levels = topic.split("/")
    parts = topic_filter.split("/")
    for index, part in enumerate(parts):
        if part == "#":
            return True
        if index >= len(levels) or (part != "+" and part != levels[index]):
            return False
    return len(parts) == len(levels)


def allow_list(options: Iterable[str] = (), environ: Optional[Mapping[str, str]] = None
               ) -> Tuple[str, ...]:
    """``GG_MQTT_ALLOW`` (comma-separated) and then the options, each checked; duplicates once."""
    env = os.environ if environ is None else environ
    entries = [f.strip() for f in (env.get(ENV_ALLOW) or "").split(",")] + [f.strip() for f in options]
    allowed: Dict[str, None] = {}
    for entry in entries:
        if entry:
            allowed[check_filter(entry)] = None
    return tuple(allowed)


def _whole_number(name: str, default: int, minimum: int, env: Mapping[str, str]) -> int:
    text = (env.get(name) or str(default)).strip()
    if not (text.isascii() and text.isdigit()) or int(text) < minimum:
        raise ParameterError("{}={} must be a whole number of at least {}".format(
            name, _excerpt(text, 20), minimum))
    return int(text)


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
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    allow: Tuple[str, ...] = ()

    @classmethod
    def from_options(cls, url: Optional[str] = None, client_id: Optional[str] = None,
                     ca_file: Optional[str] = None, cert_file: Optional[str] = None,
                     key_file: Optional[str] = None, environ: Optional[Mapping[str, str]] = None,
                     allow: Sequence[str] = ()) -> Optional["MqttSettings"]:
        """Options win over the environment (`allow` adds to ``GG_MQTT_ALLOW``); None when no
        broker URL is given anywhere. Every value is checked, a broker or not."""
        env = os.environ if environ is None else environ
        allowed = allow_list(allow, env)
        queued = _whole_number(ENV_MAX_QUEUED, DEFAULT_MAX_QUEUED, 1, env)
        # Below one message of the largest size, such a message could never be sent.
        queued_bytes = _whole_number(ENV_MAX_QUEUED_BYTES, DEFAULT_MAX_QUEUED_BYTES, MAX_MESSAGE_BYTES,
                                     env)
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
        return cls(host=parts.hostname, port=port, tls=parts.scheme == "mqtts" or bool(ca or cert),
                   client_id=client_id or env.get(ENV_CLIENT_ID) or "greengrass-ml-{}-{}".format(
                       socket.gethostname(), os.getpid()),
                   ca_file=ca, cert_file=cert, key_file=key, max_queued=queued,
                   max_queued_bytes=queued_bytes, allow=allowed)

    @property
    def url(self) -> str:
        return "{}://{}:{}".format("mqtts" if self.tls else "mqtt", self.host, self.port)


class PublishPolicy(object):
    """Who may publish what: the subscription table a core would have for this host."""

    def __init__(self, allow: Sequence[str] = (), grants: Optional[Mapping[str, Sequence[str]]] = None
                 ) -> None:
        """:param allow: topic filters for every principal without grants (callers included).
        :param grants: function ARN -> the exact topics that function publishes (and no other)."""
        self.allow = tuple(check_filter(f) for f in allow)
        self.grants = {arn: tuple(check_topic(t) for t in topics) for arn, topics in (grants or {}).items()}

    def check(self, principal: Any, topic: str) -> None:
        """Return when `principal` (the host's authenticated one) may publish to `topic`."""
        if topic.startswith("$"):
            raise PublishRefused("reserved_topic", "topic {} starts with '$': reserved topics ($aws/...: "
                                                   "shadows, jobs) are never published through the "
                                                   "host's GGRouter".format(_excerpt(topic)))
        arn = getattr(principal, "function_arn", None)
        granted = self.grants.get(arn) if arn else None
        if granted is not None:
            if topic not in granted:
                raise PublishRefused("not_allowed", "{} publishes only {}, not {}".format(
                    arn, ", ".join(granted), _excerpt(topic)))
            return
        if any(filter_matches(f, topic) for f in self.allow):
            return
        who = "function {}".format(arn) if arn else "a caller"
        listed = ("the allow-list is empty" if not self.allow else
                  "it matches no filter of the allow-list ({})".format(", ".join(self.allow)))
        raise PublishRefused("not_allowed", "{} may not publish to {}: {} (the operator grants topics "
                                            "with --mqtt-allow FILTER or {})".format(
                                                who, _excerpt(topic), listed, ENV_ALLOW))


def check_message(payload: bytes) -> None:
    if len(payload) > MAX_MESSAGE_BYTES:
        raise PublishRefused("message_too_large", "a message of {} bytes is over AWS IoT's limit of {} "
                                                  "bytes (128 KiB)".format(len(payload), MAX_MESSAGE_BYTES))


def topic_of(client_context: str) -> str:
    """The checked topic of a GGRouter client context (base64 JSON {"custom": {"subject"}})."""
    try:
        document = protocol.decode_client_context(client_context)
    except ValueError as exc:
        raise PublishRefused("bad_client_context", str(exc))
    except RecursionError:  # json's decoder on [[[[... nested deeper than the interpreter allows
        raise PublishRefused("bad_client_context", "X-Amz-Client-Context is nested too deeply")
    custom = document.get("custom")
    return check_topic(custom.get("subject") if isinstance(custom, dict) else None)


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

    @property
    def unacknowledged_bytes(self) -> int:
        with self._lock:
            return self._unacked_bytes

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
        from .ipc import run_lambda

        self.policy = PublishPolicy(settings.allow, grants)
        self.forwarder = MqttForwarder(settings)
        self._stop = threading.Event()
        host.register_function(ROUTER_ARN, admit=self.admit)
        self._thread = threading.Thread(
            target=run_lambda, name="ggrouter",
            args=(ROUTER_ARN, self.forwarder.handle, host.function_client(ROUTER_ARN)),
            kwargs={"stop_event": self._stop, "concurrency": 1}, daemon=True)
        self._thread.start()
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
        self._stop.set()
        self._thread.join(timeout=5)
        self.forwarder.close()
