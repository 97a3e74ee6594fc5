"""What GGRouter publishes: AWS IoT's topic rules, MQTT topic filters, and who may publish what.

* a function given topics (``grants``: the ML Feedback function and its two topics) publishes
  exactly those;
* every other principal (callers holding the client file's token, attached functions) publishes
  only topics matching the operator's allow-list of MQTT topic filters (``+`` and ``#`` as in
  MQTT); the default list is empty: callers publish nothing;
* ``$`` topics (``$aws/things/.../shadow/update``, jobs, ...) are never published;
* AWS IoT's limits: a topic of 1 to 256 bytes of UTF-8, at most 7 ``/`` (8 levels), no wildcard,
  no control character; a message of at most 128 KiB.

A refusal is a :class:`PublishRefused` naming its rule (:data:`RULES`: the caller's status and
errorType) and the reason.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from ...errors import ParameterError, excerpt
from ...ipc import protocol
from ...ipc.invocations import NotAdmitted
from ...ipc.topics import MAX_MESSAGE_BYTES, filter_matches, filter_problem, shape_problem

ENV_ALLOW = "GG_MQTT_ALLOW"
RULES = protocol.GGROUTER_RULES


class PublishRefused(NotAdmitted):
    """A publish GGRouter refuses: `rule` is one of :data:`RULES`, `why` the reason alone."""

    def __init__(self, rule: str, why: str) -> None:
        status, error_type = RULES[rule]
        super().__init__("GGRouter: " + why, status, error_type)
        self.rule, self.why = rule, why


def check_topic(topic: Any) -> str:
    """`topic` when one may publish to it under AWS IoT's rules; PublishRefused (400) otherwise."""
    if not isinstance(topic, str):
        raise PublishRefused("bad_topic", "the client context must name the topic in custom.subject "
                                          "(a string; got {})".format(
                                              "none" if topic is None else type(topic).__name__))
    problem = shape_problem(topic, "topic")
    if problem is not None:
        raise PublishRefused(problem.rule, problem.why)
    for wildcard in ("+", "#"):
        if wildcard in topic:
            raise PublishRefused("bad_topic", "topic {} contains the wildcard {!r}; publish to a topic "
                                              "name, not a filter".format(excerpt(topic), wildcard))
    return topic


def check_filter(topic_filter: str) -> str:
    """An allow-list entry, checked by MQTT's filter rules and AWS IoT's limits; ParameterError
    naming the filter and the rule otherwise."""
    why = filter_problem(topic_filter)
    if why is not None:
        raise ParameterError("{} / --mqtt-allow filter {}: {}".format(ENV_ALLOW, excerpt(topic_filter),
                                                                      why))
    return topic_filter


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
                                                   "host's GGRouter".format(excerpt(topic)))
        arn = getattr(principal, "function_arn", None)
        granted = self.grants.get(arn) if arn else None
        if granted is not None:
            if topic not in granted:
                raise PublishRefused("not_allowed", "{} publishes only {}, not {}".format(
                    arn, ", ".join(granted), excerpt(topic)))
            return
        if any(filter_matches(f, topic) for f in self.allow):
            return
        who = "function {}".format(arn) if arn else "a caller"
        listed = ("the allow-list is empty" if not self.allow else
                  "it matches no filter of the allow-list ({})".format(", ".join(self.allow)))
        raise PublishRefused("not_allowed", "{} may not publish to {}: {} (the operator grants topics "
                                            "with --mqtt-allow FILTER or {})".format(
                                                who, excerpt(topic), listed, ENV_ALLOW))


def check_message(payload: bytes) -> None:
    if len(payload) > MAX_MESSAGE_BYTES:
        raise PublishRefused("message_too_large", "a message of {} bytes is over AWS IoT's limit of {} "
                                                  "bytes (128 KiB)".format(len(payload), MAX_MESSAGE_BYTES))


def topic_of(client_context: str) -> str:
    """The checked topic of a GGRouter client context (base64 JSON {"custom": {"subject"}}).
    decode_client_context scans the depth before json.loads ever recurses, so a deep context is
    its ValueError, never a RecursionError."""
    try:
        document = protocol.decode_client_context(client_context)
    except ValueError as exc:
        raise PublishRefused("bad_client_context", str(exc))
    custom = document.get("custom")
    return check_topic(custom.get("subject") if isinstance(custom, dict) else None)
