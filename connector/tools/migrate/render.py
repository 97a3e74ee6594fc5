"""The texts migrate-v1 writes, from a :class:`Plan`: parameter files, the V2 deployment, the
allow-list, the report and the one-screen summary.

Every value that came from a V1 document reaches a text through YAML/JSON encoding or through
:func:`connector.tools.migrate.source.show` (printable, cut), so a document cannot add lines to the
report or escape sequences to the operator's terminal.
"""
from __future__ import annotations

import json
import os
import shlex
from typing import Any, Dict, List


from ... import __version__
from ...ipc.topics import MAX_TOPIC_BYTES
from .group import Connector
from .plan import Plan
from .topics import Allowed
from .source import show
from . import pointers

COMPONENT = "com.example.ObjectDetectionService"
UPDATE_TIMEOUT_S = 60
# Where the image (scripts/container/) reads its parameters and writes the client file.
CONFIG_IN_CONTAINER = "/etc/gg-ml/params.yaml"
CLIENT_FILE_DIR_IN_CONTAINER = "/run/gg-ml"
IMAGE = "localhost/ml-object-detection-connector:{}".format(__version__)
FILES = ("params.yaml", "feedback.yaml", "deployment.json", "mqtt-allow.txt", "report.txt")


def _yaml(header: str, values: Dict[str, str]) -> str:
    import yaml  # here, not at import: `python -m connector --help` works without PyYAML
    body = yaml.safe_dump(values, default_flow_style=False, sort_keys=False, allow_unicode=False,
                          width=1000)
    return "# {}\n# Written by `python -m connector migrate-v1`; see report.txt.\n{}".format(
        header, body)


def params_yaml(plan: Plan) -> str:
    return _yaml("Connector parameters for `python -m connector serve --config FILE`.", plan.params)


def feedback_yaml(plan: Plan) -> str:
    assert plan.feedback is not None and plan.feedback.values is not None
    return _yaml("ML Feedback parameters for `serve --feedback-config FILE`.", plan.feedback.values)


def mqtt_allow(plan: Plan) -> str:
    return "".join(a.filter + "\n" for a in plan.allowed)


def deployment(plan: Plan) -> Dict[str, Any]:
    """The `aws greengrassv2 create-deployment --cli-input-json` document."""
    t = plan.target
    config = {"Parameters": plan.params, "MqttAllow": ",".join(a.filter for a in plan.allowed)}
    return {
        "targetArn": "arn:{}:iot:{}:{}:thinggroup/{}".format(t["partition"], t["region"],
                                                              t["account"], t["thing_group"]),
        "deploymentName": "ObjectDetectionService-{}".format(
            plan.params["LocalInferenceServiceName"]),
        "components": {COMPONENT: {
            "componentVersion": t["version"],
            # reset first: the deployment sets the whole parameter set, nothing left from before
            "configurationUpdate": {"reset": ["/Parameters", "/MqttAllow"],
                                    "merge": json.dumps(config, sort_keys=True)}}},
        "deploymentPolicies": {
            "failureHandlingPolicy": "ROLLBACK",
            "componentUpdatePolicy": {"timeoutInSeconds": UPDATE_TIMEOUT_S,
                                      "action": "NOTIFY_COMPONENTS"}},
    }


def deployment_json(plan: Plan) -> str:
    return json.dumps(deployment(plan), indent=2) + "\n"


def files(plan: Plan, out: str) -> Dict[str, str]:
    """{fixed file name: text} of what this plan writes."""
    # deployment.json is always written: the V2 component hands its configuration to its scripts
    # only through Setenv, quoted there, so no value can stop the deployment.
    written = {"params.yaml": params_yaml(plan), "mqtt-allow.txt": mqtt_allow(plan),
               "deployment.json": deployment_json(plan)}
    if plan.feedback is not None and plan.feedback.values is not None:
        written["feedback.yaml"] = feedback_yaml(plan)
    written["report.txt"] = report(plan, out, sorted(written) + ["report.txt"])
    return written


def _q(text: str) -> str:
    return shlex.quote(text)


def _filter(allowed: Allowed) -> str:
    """A filter as printed (report, commands): through show(), whole (topics.filter_problem lets
    only printable filters without blanks around them into the allow-list, which show() leaves as
    they are; anything else would be shown escaped, never raw)."""
    return show(allowed.filter, MAX_TOPIC_BYTES + 1)


def allow_flags(plan: Plan) -> str:
    return " ".join("--mqtt-allow {}".format(_q(_filter(a))) for a in plan.allowed)


def next_steps(plan: Plan, out: str) -> List[str]:
    """The command to run next for each target, paths absolute (podman takes a relative -v source
    for a volume name) and shell-quoted like the filters."""
    out = os.path.abspath(out)
    params = os.path.join(out, "params.yaml")
    has_feedback = plan.feedback is not None and plan.feedback.values is not None
    feedback = " --feedback-config {}".format(_q(os.path.join(out, "feedback.yaml"))) \
        if has_feedback else ""
    allow = ",".join(_filter(a) for a in plan.allowed)
    # The image's entry point runs serve on CONFIG_IN_CONTAINER (docs/container.md).
    container = ("podman run -d --name object-detection --network host --pid host --user "
                 "\"$(id -u):$(id -g)\" -v {p}:{c}:ro -v {m}:{m}:ro -v \"$HOME/.gg-ml:{d}\"{e} {i}").format(
        p=_q(params), c=CONFIG_IN_CONTAINER, m=_q(plan.params["MLModelDestinationPath"]),
        d=CLIENT_FILE_DIR_IN_CONTAINER, i=IMAGE,
        e=" -e GG_MQTT_ALLOW={}".format(_q(allow)) if allow else "")
    return [
        "here:        python -m connector serve --config {}{}{}".format(
            _q(params), feedback, " " + allow_flags(plan) if plan.allowed else ""),
        "V2 fleet:    aws greengrassv2 create-deployment --cli-input-json {}".format(
            _q("file://" + os.path.join(out, "deployment.json"))),
        "container:   " + container,
        "Kubernetes:  kubectl -n gg-ml create configmap object-detection-params --from-file={} "
        "--dry-run=client -o yaml | kubectl apply -f -   (manifests/kubernetes, docs/kubernetes.md)".format(
            _q("params.yaml=" + params)),
        "systemd:     sudo scripts/install/{} --systemd --config {}{}".format(
            plan.install_script, _q(params), " --feedback" if has_feedback else ""),
    ]


def _detector_lines(plan: Plan) -> List[str]:
    d = plan.detector
    if isinstance(d, Connector):
        origin = "connector {} version {} (Id {}, {})".format(d.name, d.version, show(d.id),
                                                              show(d.arn))
    else:
        origin = "this project's V1 Lambda {} (Id {})".format(show(d.arn), show(d.id))
    lines = ["  from: {} in {}".format(origin, show(d.where))]
    lines += ["  {} = {}".format(k, show(v)) for k, v in plan.params.items()]
    lines.append("  the model path: {}".format(plan.model_origin))
    if plan.model_resource is not None:
        data = plan.model_resource.data
        lines.append("  the V1 model: {} {}".format(plan.model_resource.type, show(
            data.get("S3Uri") or data.get("SageMakerJobArn") or "")))
    return lines


def _feedback_lines(plan: Plan) -> List[str]:
    fb = plan.feedback
    if fb is None:
        return ["  none in the group"]
    lines = ["  from: {} (Id {}) in {}".format(show(getattr(fb.source, "arn", "")),
                                                show(fb.source.id), show(fb.source.where))]
    if fb.values is None:
        return lines + ["  NOT WRITTEN: {}".format(show(fb.problem, 300))]
    lines.append("  config ids: {}".format(", ".join(fb.config_ids)))
    return lines + ["  maps to this project's feedback service: serve --feedback-config "
                    "feedback.yaml (it uploads and publishes itself: give serve --mqtt-url)"]


def _allow_lines(plan: Plan) -> List[str]:
    if not plan.allowed:
        return ["  (none: callers may publish nothing)"]
    lines = ["  {}    from subscription {} ({} -> cloud)".format(
        _filter(a), show(a.subscription.id), show(a.subscription.source)) for a in plan.allowed]
    return lines + ["  serve flags: " + allow_flags(plan),
                    "  environment: GG_MQTT_ALLOW={}".format(
                        _q(",".join(_filter(a) for a in plan.allowed)))]


def report(plan: Plan, out: str, written: List[str]) -> str:
    lines = ["Greengrass V1 to the ML object-detection service: migration report",
             "(python -m connector migrate-v1; Greengrass V1 reached its end of support on "
             "2026-10-07)", "", "SOURCES"]
    lines += ["  {}: {}".format(d.path, d.kind) for d in plan.group.documents]
    lines += ["", "WRITTEN (in {})".format(show(out)), "  " + ", ".join(written), "",
              "OBJECT DETECTION SERVICE -> params.yaml (serve --config)"] + _detector_lines(plan)
    lines += ["", "ML FEEDBACK -> feedback.yaml"] + _feedback_lines(plan)
    lines += ["", "MQTT ALLOW-LIST -> mqtt-allow.txt and deployment.json (MqttAllow, which the "
              "component passes to the service as GG_MQTT_ALLOW)"] + _allow_lines(plan)
    lines += ["", "NOT MAPPED"] + pointers.unmapped_lines(plan)
    lines += ["", "WARNINGS"] + (["  " + w for w in plan.warnings] or ["  none"])
    lines += ["", "EDIT BEFORE USE"] + (["  " + p for p in plan.placeholders] or ["  nothing"])
    lines += ["", "NEXT: run it one of these ways (the container image: scripts/container/build.sh, "
              "docs/container.md)"] + ["  " + s for s in next_steps(plan, out)]
    lines += ["  note, systemd: the unit runs `serve --config` only; for feedback or MQTT add "
              "--feedback-config / --mqtt-url and Environment=GG_MQTT_ALLOW=... with "
              "`sudo systemctl edit gg-ml-connector`",
              "  note, V2 fleet: publish the component first (manifests/greengrass-v2/"
              "standalone-component-recipe.yaml, aws greengrassv2 create-component-version; MqttUrl for "
              "the broker); "
              "the fleet component runs no feedback service"]
    return "\n".join(lines) + "\n"


def summary(plan: Plan, out: str, written: List[str]) -> str:
    d = plan.detector
    what = "{} v{}".format(d.name, d.version) if isinstance(d, Connector) else "V1 Lambda"
    unmapped = pointers.counts(plan)
    kinds = [k.lower() for k in ("Connectors", "Functions", "Resources", "Subscriptions")
             if k in plan.group.origin]
    lines = [
        "migrate-v1: read {} document(s) with {}".format(len(plan.group.documents),
                                                          ", ".join(kinds)),
        "service:  {} -> {} on model {}".format(what, plan.params["LocalInferenceServiceName"],
                                               show(plan.params["MLModelDestinationPath"])),
        "feedback: {}".format("none" if plan.feedback is None else
                              "NOT written (see warnings)" if plan.feedback.values is None
                              else "feedback.yaml ({} config ids)".format(
                                  len(plan.feedback.config_ids))),
        "MQTT:     {} allowed filter(s){}; {} subscription(s) not mapped".format(
            len(plan.allowed), ": " + ", ".join(show(a.filter, 40) for a in plan.allowed[:4])
            if plan.allowed else "", len(plan.not_mapped)),
        "not mapped: {}".format(unmapped),
        "wrote:    {}".format(", ".join(os.path.join(out, n) for n in written)),
    ]
    if plan.placeholders:
        lines.append("EDIT:     {} placeholder(s) to fill in (report.txt, EDIT BEFORE USE)".format(
            len(plan.placeholders)))
    return "\n".join(lines + ["next:"] + ["  " + s for s in next_steps(plan, out)]) + "\n"
