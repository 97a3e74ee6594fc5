"""MQTT the Greengrass way: post_work to the GGRouter function (SPEC section 4).

The same call runs inside a Greengrass core (which routes by its subscriptions), under the V2
Lambda launcher, and against the standalone host (which forwards to its broker, see
:mod:`connector.standalone.ggrouter`).

Outcomes: True when the router took the message; False when nothing routes MQTT here (a
standalone host started without a broker answers 404: the message is skipped, counted and logged
at most once a minute, so a local-directory setup needs no broker) or when the router refuses this
message for good (a bad topic, a topic this function may not publish, a message over 128 KiB:
retrying would be refused again and hold up the spool behind it; skipped, counted and logged the
same way); :class:`TransientError` when the IPC endpoint is unreachable or refuses for now (429:
the broker's queue is full; a wrong token; the request stays in the spool).
"""
from __future__ import annotations

import json
import logging
from typing import Any, Dict

from ..ipc import protocol
from ..ipc.client import IPCError
from .destinations import TransientError
from .ratelog import RateLimitedLog

log = logging.getLogger("connector.feedback.publisher")

PREDICTION_TOPIC = "feedback/message/prediction"
STATUS_TOPIC = "feedback/message/status"
# The router's refusals that would be the same on every retry (not its 429: the queue drains).
_REFUSED_FOR_GOOD = frozenset(error_type for status, error_type in protocol.GGROUTER_RULES.values()
                               if status != 429)


class RouterPublisher(object):
    def __init__(self, client: Any, source_arn: str) -> None:
        """:param client: an IPC client (post_work) of the core or host this function runs on."""
        self.client = client
        self.source_arn = source_arn
        self.skipped = 0
        self._ratelog = RateLimitedLog(log)

    def publish(self, topic: str, document: Dict[str, Any]) -> bool:
        context = protocol.encode_client_context(
            {"source": self.source_arn, "subject": topic, "queueFullPolicy": ""})
        body = json.dumps(document).encode("utf-8")
        try:
            self.client.post_work(protocol.GGROUTER_ARN, body, context, protocol.INVOCATION_EVENT)
        except IPCError as exc:
            if exc.status == 404:
                self.skipped += 1
                self._ratelog.warning("no-router", "MQTT message to %s skipped: nothing routes MQTT "
                                      "here (start the host with --mqtt-url or set GG_MQTT_URL): %s",
                                      topic, exc)
                return False
            if exc.status == 413 or exc.error_type in _REFUSED_FOR_GOOD:
                self.skipped += 1
                self._ratelog.warning("refused-{}".format(exc.status), "MQTT message to %s skipped: "
                                      "GGRouter refused it: %s", topic, exc)
                return False
            raise TransientError("IPCError", "publishing to {} through GGRouter failed: {}".format(
                topic, exc))
        return True
