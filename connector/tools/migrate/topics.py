"""V1 subscriptions to the MQTT topic filters the standalone host's router may let callers publish.

A V1 core forwarded a function's publish to AWS IoT only where a subscription said so (Source =
the function, Target = ``cloud``, Subject = the topic filter). The standalone host's router takes
an allow-list of topic filters (``serve --mqtt-allow FILTER``, ``GG_MQTT_ALLOW`` comma-separated).
Only subscriptions from user Lambdas (which become callers of the service) and from the
connectors this project replaces (ObjectDetection, MLFeedback) become filters; everything else is
reported with the reason it does not map. ``$``-topics (shadows, ``$aws/...``) never do: the
service publishes none for callers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple, Union

from ...ipc import topics
from .group import Subscription
from .source import LAYOUT_CONTROLS

REPLACED_CONNECTORS = re.compile(r"^(ObjectDetection(x86-64|ARMv7|Aarch64JTX2)|MLFeedback)$")
_CONNECTOR = re.compile(r"^arn:aws[a-z-]*:greengrass:[a-z0-9-]*::/connectors/([A-Za-z0-9_.-]+)/")
_USER_LAMBDA = re.compile(r"^arn:aws[a-z-]*:lambda:[a-z0-9-]+:[0-9]{12}:function:[^:]+(:[^:]+)?$")
_SYSTEM_LAMBDA = re.compile(r"^arn:aws[a-z-]*:lambda:::function:GG")
_DEVICE = re.compile(r"^arn:aws[a-z-]*:iot:[a-z0-9-]*:[0-9]*:thing/")
_LAYOUT_CONTROL = re.compile("[" + LAYOUT_CONTROLS + "]")


@dataclass(frozen=True)
class Allowed:
    filter: str
    subscription: Subscription


@dataclass(frozen=True)
class NotMapped:
    subscription: Subscription
    reason: str


def endpoint(text: str) -> Tuple[str, str]:
    """(kind, name) of a subscription's Source or Target: cloud, shadow, lambda, system,
    connector, device or unknown."""
    if text == "cloud":
        return "cloud", "cloud"
    if text == "GGShadowService":
        return "shadow", text
    match = _CONNECTOR.match(text)
    if match:
        return "connector", match.group(1)
    if _SYSTEM_LAMBDA.match(text):
        return "system", text
    if _USER_LAMBDA.match(text):
        return "lambda", text
    if _DEVICE.match(text):
        return "device", text
    return "unknown", text


def filter_problem(topic: str) -> Optional[str]:
    """Why `topic` cannot be an allow-list entry, or None when it can: the service's own filter
    rules (connector.ipc.topics), plus what would not reach the service as written (a comma splits
    GG_MQTT_ALLOW's entries; the service strips blanks around each) or would not read as what it
    is (a line separator starts a line of mqtt-allow.txt for str.splitlines(); a bidirectional-text
    control shows the filter, in the report and a terminal, other than it matches). Such a filter,
    if really meant, is added by hand."""
    if topic.startswith("$"):
        return ("a $-topic (reserved: shadows and other $aws/ topics); the service never publishes "
                "$-topics for callers")
    if "," in topic:
        return "the topic holds a comma, which separates GG_MQTT_ALLOW's entries"
    control = _LAYOUT_CONTROL.search(topic)
    if control:
        return ("the topic holds U+{:04X}, a line separator or bidirectional-text control: it would "
                "not read as the filter it is".format(ord(control.group())))
    problem = topics.filter_problem(topic)
    if problem is None and topic != topic.strip():
        return "the topic starts or ends with a blank, which the service strips from each filter"
    return problem


def _reason_not_to_cloud(source: Tuple[str, str], target: Tuple[str, str], subject: str) -> str:
    kinds = (source[0], target[0])
    if "shadow" in kinds or subject.startswith("$aws/things/"):
        return ("shadow traffic: the standalone host has no shadow service (V2: the shadow manager "
                "component, aws.greengrass.ShadowManager)")
    if source[0] == "cloud":
        return ("cloud to a local function: the standalone host delivers no MQTT to callers; "
                "subscribe in the program with an MQTT client (V2 Lambda components: the legacy "
                "subscription router, aws.greengrass.LegacySubscriptionRouter)")
    if "device" in kinds:
        return ("client-device traffic: the standalone host runs no MQTT broker for devices "
                "(V2: the Moquette broker and MQTT bridge components)")
    if target[0] == "connector":
        return "input of the {} connector, which this project does not run".format(target[1])
    if source[0] in ("lambda", "connector", "system") and target[0] in ("lambda", "system"):
        return ("local function-to-function messages: the standalone host has no local pub/sub "
                "(V2 Lambda components: aws.greengrass.LegacySubscriptionRouter)")
    return "unknown source or target: nothing in this project corresponds to it"


def classify(sub: Subscription) -> Union[Allowed, NotMapped]:
    source, target = endpoint(sub.source), endpoint(sub.target)
    if target[0] != "cloud":
        return NotMapped(sub, _reason_not_to_cloud(source, target, sub.subject))
    if source[0] == "connector" and not REPLACED_CONNECTORS.match(source[1]):
        return NotMapped(sub, "published by the {} connector, which this project does not run"
                         .format(source[1]))
    if source[0] == "system":
        return NotMapped(sub, "published by a Greengrass V1 system function; nothing in this "
                         "project publishes for it")
    if source[0] not in ("lambda", "connector"):
        return NotMapped(sub, _reason_not_to_cloud(source, target, sub.subject)
                         if source[0] != "cloud" else "cloud to cloud: not a publish of the device")
    problem = filter_problem(sub.subject)
    if problem:
        return NotMapped(sub, problem)
    return Allowed(sub.subject, sub)


def allow_list(subscriptions: Iterable[Subscription]) -> Tuple[List[Allowed], List[NotMapped]]:
    """The allow-list (first occurrence of each filter, in document order) and what is left out."""
    allowed: List[Allowed] = []
    left: List[NotMapped] = []
    seen = set()
    for sub in subscriptions:
        result = classify(sub)
        if isinstance(result, NotMapped):
            left.append(result)
        elif result.filter not in seen:
            seen.add(result.filter)
            allowed.append(result)
    return allowed, left
