"""What does not map, each with a one-line pointer to where it goes instead.

V2 equivalents are named only where the AWS IoT Greengrass V2 Developer Guide says a component
"provides similar functionality to the ... connector in AWS IoT Greengrass V1" (CloudWatch
metrics, Device Defender, Kinesis Data Firehose, Modbus-RTU protocol adapter, Amazon SNS) or
documents the component as the V1 feature's successor (IP detector, stream manager). Every other
connector is reported with no mapping.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, List

from .feedback_map import FEEDBACK_CONNECTOR, FEEDBACK_HANDLER
from .group import Function, Resource
from .source import show

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .plan import Plan

V2_CONNECTORS = {
    "CloudWatchMetrics": "aws.greengrass.Cloudwatch",
    "DeviceDefender": "aws.greengrass.DeviceDefender",
    "KinesisFirehose": "aws.greengrass.KinesisFirehose",
    "ModbusRTUProtocolAdapter": "aws.greengrass.Modbus",
    "SNS": "aws.greengrass.SNS",
}
V2_SYSTEM_FUNCTIONS = {
    "GGIPDetector": "aws.greengrass.clientdevices.IPDetector",
    "GGStreamManager": "aws.greengrass.StreamManager",
}
_SYSTEM = re.compile(r"^arn:aws[a-z-]*:lambda:::function:(GG[A-Za-z]+)")
USER_LAMBDA_POINTER = ("-> run its code unchanged as a plain program, or as a V2 generic component, "
                       "that calls the service through the bundled SDK (it finds the service by its "
                       "client file: GG_ML_IPC_FILE; docs/greengrass-v2.md)")


def connector_pointer(name: str) -> str:
    if name in V2_CONNECTORS:
        return "no mapping here; V2 equivalent: {}".format(V2_CONNECTORS[name])
    if name.startswith("ImageClassification"):
        return ("no mapping here; V2 has the sample component aws.greengrass.DLRImageClassification "
                "(other parameters and topics: not a drop-in)")
    return "no mapping; no V2 equivalent found"


def _connector_lines(plan: "Plan") -> List[str]:
    lines = []
    for c in plan.group.connectors:
        if c is plan.detector:
            continue
        if c.name == FEEDBACK_CONNECTOR:
            if plan.feedback is None or c is not plan.feedback.source:
                lines.append("    {} (Id {}): a second ML Feedback connector; not migrated".format(
                    show(c.arn), show(c.id)))
            continue
        lines.append("    {} (Id {}): {}".format(show(c.arn), show(c.id), connector_pointer(c.name)))
    return lines


def _value(value: object, unit: str = "") -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return show(value) + unit


def _settings(f: Function) -> str:
    s = f.settings
    parts = ["handler {}".format(_value(f.executable)),
             "pinned {}".format(_value(s.get("Pinned"))),
             "memory {}".format(_value(s.get("MemorySize"), " KB")),
             "timeout {}".format(_value(s.get("Timeout"), " s")),
             "isolation {}".format(show(s.get("IsolationMode") or "GreengrassContainer")),
             "encoding {}".format(show(s.get("EncodingType") or "json"))]
    if f.variables:
        parts.append("variables {}".format(", ".join(show(k, 40) for k in sorted(f.variables))))
    if f.resource_ids:
        parts.append("resources {}".format(", ".join(show(r, 40) for r in f.resource_ids)))
    return "; ".join(parts)


def _function_lines(plan: "Plan") -> List[str]:
    lines = []
    for f in plan.group.functions:
        if f is plan.detector:
            continue
        if f.executable == FEEDBACK_HANDLER and plan.feedback is not None \
                and f is plan.feedback.source:
            continue
        system = _SYSTEM.match(f.arn)
        if system:
            v2 = V2_SYSTEM_FUNCTIONS.get(system.group(1))
            lines.append("    {}: Greengrass V1 system function, part of the V1 core{}".format(
                show(f.arn), "; V2: {}".format(v2) if v2 else ": nothing to migrate"))
            continue
        lines.append("    {} (Id {}): {}".format(show(f.arn), show(f.id), _settings(f)))
        lines.append("      " + USER_LAMBDA_POINTER)
    return lines


def _resource_pointer(r: Resource) -> str:
    data = r.data
    if r.type in ("LocalVolumeResourceData", "LocalDeviceResourceData"):
        paths = show(data.get("SourcePath"))
        if data.get("DestinationPath"):
            paths += " -> {}".format(show(data.get("DestinationPath")))
        return ("{} {}: standalone, the service and your programs see the host's paths (give their "
                "user access); in a container mount it (-v / --device)".format(r.type, paths))
    if r.type == "SecretsManagerSecretResourceData":
        return "{} {}: no mapping (V2: aws.greengrass.SecretManager)".format(r.type, show(
            data.get("ARN")))
    return "{} {} at {}: another model, not served by this migration".format(
        r.type, show(data.get("S3Uri") or data.get("SageMakerJobArn")),
        show(data.get("DestinationPath")))


def unmapped_lines(plan: "Plan") -> List[str]:
    lines = ["  Connectors:"] + (_connector_lines(plan) or ["    none"])
    lines += ["  Lambda functions:"] + (_function_lines(plan) or ["    none"])
    lines += ["  Subscriptions:"] + ([
        "    {} ({} -> {}, subject {}): {}".format(show(n.subscription.id), show(n.subscription.source),
                                                   show(n.subscription.target),
                                                   show(n.subscription.subject), n.reason)
        for n in plan.not_mapped] or ["    none"])
    others = [r for r in plan.group.resources if r is not plan.model_resource]
    lines += ["  Resources:"] + (["    {} ({}): {}".format(show(r.id), show(r.name),
                                                          _resource_pointer(r)) for r in others]
                                 or ["    none"])
    return lines


def counts(plan: "Plan") -> str:
    connectors = len(_connector_lines(plan))
    functions = sum(1 for line in _function_lines(plan) if not line.startswith("      "))
    resources = sum(1 for r in plan.group.resources if r is not plan.model_resource)
    return "{} connector(s), {} function(s), {} subscription(s), {} resource(s) (report.txt)".format(
        connectors, functions, len(plan.not_mapped), resources)
