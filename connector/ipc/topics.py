"""AWS IoT's topic names and MQTT's topic filters: one grammar for the host's GGRouter (what a
caller may publish, what an operator may allow) and for migrate-v1 (which V1 subscriptions become
allow-list entries), so that a filter migrate-v1 writes is one the service accepts.

* a topic or filter: 1 to 256 bytes of UTF-8, at most 7 ``/`` (8 levels), no control character;
* a filter: ``+`` a whole level, ``#`` a whole level and the last one; never a ``$`` topic.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

from ..errors import excerpt

# AWS IoT Core's limits (a device publishing more is disconnected or refused there).
MAX_TOPIC_BYTES = 256
MAX_TOPIC_SLASHES = 7
MAX_MESSAGE_BYTES = 128 * 1024


class TopicProblem(NamedTuple):
    rule: str  # a key of protocol.GGROUTER_RULES: how the host answers a caller with this problem
    why: str


def shape_problem(text: str, what: str) -> Optional[TopicProblem]:
    """What is wrong with `text` (a topic or a filter, named `what`) by AWS IoT's size, depth and
    character rules; None when nothing is."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return TopicProblem("bad_topic", "{} {} is not valid UTF-8 (a lone surrogate)".format(
            what, excerpt(text)))
    if not text:
        return TopicProblem("bad_topic", "the {} is empty".format(what))
    if size > MAX_TOPIC_BYTES:
        return TopicProblem("topic_too_long", "{} {} has {} bytes; AWS IoT allows at most {} bytes of "
                                              "UTF-8".format(what, excerpt(text), size, MAX_TOPIC_BYTES))
    slashes = text.count("/")
    if slashes > MAX_TOPIC_SLASHES:
        return TopicProblem("topic_too_deep", "{} {} has {} '/' separators; AWS IoT allows at most {} "
                                              "({} levels)".format(what, excerpt(text), slashes,
                                                                   MAX_TOPIC_SLASHES, MAX_TOPIC_SLASHES + 1))
    control = next((c for c in text if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F), None)
    if control is not None:
        return TopicProblem("bad_topic", "{} {} contains the control character U+{:04X}; topics are "
                                         "printable UTF-8".format(what, excerpt(text), ord(control)))
    return None


def filter_problem(topic_filter: str) -> Optional[str]:
    """Why `topic_filter` cannot be an allow-list entry, or None when it can."""
    problem = shape_problem(topic_filter, "filter")
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
