"""GGRouter's broker and bounds: ``--mqtt-*`` options and ``GG_MQTT_*`` settings.

Broker: ``--mqtt-url`` / ``GG_MQTT_URL`` (``mqtt://HOST[:1883]`` or ``mqtts://HOST[:8883]``),
``--mqtt-client-id`` / ``GG_MQTT_CLIENT_ID``, and for TLS ``--mqtt-ca`` / ``GG_MQTT_CA_FILE``,
``--mqtt-cert`` / ``GG_MQTT_CERT_FILE``, ``--mqtt-key`` / ``GG_MQTT_KEY_FILE`` (AWS IoT Core: its
ATS endpoint on 8883, the Amazon root CA and the device certificate and key, with a client id the
device's policy allows). Bounds: ``GG_MQTT_MAX_QUEUED`` messages holding ``GG_MQTT_MAX_QUEUED_BYTES``
may wait for the broker. The callers' allow-list: ``--mqtt-allow FILTER`` (repeatable), added to
``GG_MQTT_ALLOW`` (comma-separated). Every value is checked at start-up, a broker or not.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from ... import settings
from ...errors import ParameterError, excerpt
from .topics import ENV_ALLOW, MAX_MESSAGE_BYTES, check_filter

ENV_URL = "GG_MQTT_URL"
ENV_CLIENT_ID = "GG_MQTT_CLIENT_ID"
ENV_CA = "GG_MQTT_CA_FILE"
ENV_CERT = "GG_MQTT_CERT_FILE"
ENV_KEY = "GG_MQTT_KEY_FILE"
ENV_MAX_QUEUED = "GG_MQTT_MAX_QUEUED"
ENV_MAX_QUEUED_BYTES = "GG_MQTT_MAX_QUEUED_BYTES"

DEFAULT_MAX_QUEUED = int(settings.BY_NAME[ENV_MAX_QUEUED].default)
DEFAULT_MAX_QUEUED_BYTES = int(settings.BY_NAME[ENV_MAX_QUEUED_BYTES].default)


def allow_list(options: Iterable[str] = (), environ: Optional[Mapping[str, str]] = None
               ) -> Tuple[str, ...]:
    """``GG_MQTT_ALLOW`` (comma-separated) and then the options, each checked; duplicates once."""
    entries = [f.strip() for f in settings.get(ENV_ALLOW, environ).split(",")] + [f.strip() for f in options]
    allowed: Dict[str, None] = {}
    for entry in entries:
        if entry:
            allowed[check_filter(entry)] = None
    return tuple(allowed)


def _whole_number(name: str, minimum: int, env: Optional[Mapping[str, str]]) -> int:
    text = settings.get(name, env)
    if not (text.isascii() and text.isdigit()) or int(text) < minimum:
        raise ParameterError("{}={} must be a whole number of at least {}".format(
            name, excerpt(text, 20), minimum))
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
        env = settings.environment(environ)
        allowed = allow_list(allow, env)
        queued = _whole_number(ENV_MAX_QUEUED, 1, env)
        # Below one message of the largest size, such a message could never be sent.
        queued_bytes = _whole_number(ENV_MAX_QUEUED_BYTES, MAX_MESSAGE_BYTES, env)
        url = url or settings.get(ENV_URL, env)
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
        cert = cert_file or settings.get(ENV_CERT, env) or None
        key = key_file or settings.get(ENV_KEY, env) or None
        if bool(cert) != bool(key):
            raise ParameterError("an MQTT client certificate needs its key and the key its certificate "
                                 "(--mqtt-cert/{} and --mqtt-key/{})".format(ENV_CERT, ENV_KEY))
        ca = ca_file or settings.get(ENV_CA, env) or None
        for what, path in (("CA file", ca), ("certificate", cert), ("key", key)):
            if path and not os.path.isfile(path):
                raise ParameterError("MQTT {} {!r} does not exist".format(what, path))
        return cls(host=parts.hostname, port=port, tls=parts.scheme == "mqtts" or bool(ca or cert),
                   client_id=client_id or settings.get(ENV_CLIENT_ID, env) or "greengrass-ml-{}-{}".format(
                       socket.gethostname(), os.getpid()),
                   ca_file=ca, cert_file=cert, key_file=key, max_queued=queued,
                   max_queued_bytes=queued_bytes, allow=allowed)

    @property
    def url(self) -> str:
        return "{}://{}:{}".format("mqtts" if self.tls else "mqtt", self.host, self.port)
