"""What maps and what does not: from a :class:`V1Group` to a :class:`Plan`.

The object-detection service comes from the group's ObjectDetection connector (or, for groups
that already ran this project as a V1 Lambda, that function's environment). Its
``MLModelDestinationPath`` is the ``DestinationPath`` of the ML resource named by
``MLModelResourceId`` (the V1 console fills the parameter from it; under V1 the core mounted the
model there inside the Lambda's container). The result is checked with this project's own rules
(:func:`connector.params.parse_parameters`): a value that fails stops the migration with the
parameter, its value and the rule, never a file ``serve`` would refuse.

Missing pieces (no resource definition, no region) become warnings and, where a value is needed,
placeholders named in the report; they never fail the run. Unusable input does.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from ... import __version__
from ...errors import ParameterError
from ...params import RULES, parse_parameters
from .group import ML_RESOURCE_TYPES, Connector, Function, Resource, V1Group, get
from .source import MigrationError, show
from .topics import Allowed, NotMapped, allow_list
from . import feedback_map

DETECTOR = re.compile(r"^ObjectDetection(x86-64|ARMv7|Aarch64JTX2)$")
DETECTOR_HANDLER = "connector.lambda_function.function_handler"
INSTALL_SCRIPTS = {"x86-64": "install-x86_64.sh", "ARMv7": "install-armv7.sh",
                   "Aarch64JTX2": "install-aarch64.sh"}
PLACEHOLDER_MODEL = "/EDIT-ME/model-directory"
PLACEHOLDER_THING_GROUP = "EDIT-ME-thing-group"
PLACEHOLDER_REGION = "region"
PLACEHOLDER_ACCOUNT = "account-id"
THING_GROUP_PATTERN = r"^[a-zA-Z0-9:_-]{1,128}$"
ACCOUNT_PATTERN = r"^[0-9]{12}$"
VERSION_PATTERN = r"^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$"


@dataclass(frozen=True)
class Options:
    model_path: Optional[str] = None
    params: Tuple[Tuple[str, str], ...] = ()
    connector_id: Optional[str] = None
    thing_group: Optional[str] = None
    component_version: str = __version__  # the component's version is the package's
    region: Optional[str] = None
    account: Optional[str] = None


@dataclass
class Plan:
    group: V1Group
    detector: Union[Connector, Function]
    variant: Optional[str]                 # x86-64, ARMv7, Aarch64JTX2; None for our V1 Lambda
    params: Dict[str, str]
    model_origin: str
    model_resource: Optional[Resource]
    feedback: Optional[feedback_map.Feedback]
    allowed: List[Allowed]
    not_mapped: List[NotMapped]
    target: Dict[str, str]                 # partition, region, account, thing_group, version
    warnings: List[str] = field(default_factory=list)
    placeholders: List[str] = field(default_factory=list)

    @property
    def install_script(self) -> str:
        return INSTALL_SCRIPTS.get(self.variant or "", "install-<arch>.sh")


def _detectors(group: V1Group) -> List[Union[Connector, Function]]:
    found: List[Union[Connector, Function]] = [c for c in group.connectors if DETECTOR.match(c.name)]
    return found + [f for f in group.functions if f.executable == DETECTOR_HANDLER]


def choose_detector(group: V1Group, wanted: Optional[str]) -> Union[Connector, Function]:
    """The one ObjectDetection connector (or this project's V1 Lambda) to migrate."""
    candidates = _detectors(group)
    if wanted is not None:
        picked = [c for c in candidates if c.id == wanted]
        if not picked:
            raise MigrationError("--connector-id {}: no ObjectDetection connector has that Id (found: "
                                 "{})".format(show(wanted), ", ".join(show(c.id) for c in candidates)
                                              or "none"))
        return picked[0]
    if len(candidates) > 1:
        raise MigrationError("{}: {} ObjectDetection connectors ({}); one service serves one model: "
                             "pick one with --connector-id ID".format(
                                 group.origin.get("Connectors", "the group"), len(candidates),
                                 ", ".join(show(c.id) for c in candidates)))
    if candidates:
        return candidates[0]
    if "Connectors" not in group.origin and "Functions" not in group.origin:
        raise MigrationError("{}: no connectors given: add the group.json or the connector "
                             "definition version (aws greengrass get-connector-definition-version)"
                             .format(", ".join(d.path for d in group.documents)))
    raise MigrationError("{}: the group has no ObjectDetection connector (ObjectDetectionx86-64, "
                         "ObjectDetectionARMv7, ObjectDetectionAarch64JTX2) and no function running "
                         "{}; nothing to migrate".format(
                             ", ".join(d.path for d in group.documents), DETECTOR_HANDLER))


def _raw_parameters(detector: Union[Connector, Function], warnings: List[str]) -> Dict[str, str]:
    if isinstance(detector, Connector):
        raw: Dict[str, Any] = dict(detector.parameters)
        where = detector.where + ".Parameters"
    else:
        raw = {k: v for k, v in detector.variables.items() if k in RULES}
        where = detector.where + ".FunctionConfiguration.Environment.Variables"
    for name, value in raw.items():
        if not isinstance(value, str):
            raise MigrationError("{}.{} must be a string (Greengrass parameters are strings), not {}"
                                 .format(where, show(name, 60), type(value).__name__))
    unknown = sorted(show(k, 60) for k in raw if k not in RULES)
    if unknown:
        warnings.append("{}: parameter(s) {} are not parameters of this project; not carried"
                        .format(where, ", ".join(unknown)))
    return {k: v for k, v in raw.items() if k in RULES}


def _ml_resource(group: V1Group, resource_id: Optional[str], options: Options,
                 warnings: List[str]) -> Optional[Resource]:
    """The ML resource MLModelResourceId names. A group whose resources are given but hold no such
    ML resource is broken (V1 would not deploy it): an error, unless --model-path says where the
    model is. Resources not given at all are a missing piece: a warning."""
    if not resource_id:
        return None
    named = [r for r in group.resources if r.id == resource_id]
    ml = [r for r in named if r.type in ML_RESOURCE_TYPES]
    if ml:
        return ml[0]
    if "Resources" not in group.origin:
        warnings.append("no resource definition given: MLModelDestinationPath is the connector's "
                        "own value, unchecked against the ML resource {}".format(show(resource_id)))
        return None
    problem = ("{}: resource {} is a {}, not an ML model resource".format(
        named[0].where, show(resource_id), named[0].type) if named else
        "{}: no ML model resource (S3 or SageMaker) has the Id {} that MLModelResourceId names"
        .format(group.origin["Resources"], show(resource_id)))
    if options.model_path is None:
        raise MigrationError(problem + "; give --model-path DIR if the model is elsewhere")
    warnings.append(problem)
    return None


def resolve_model_path(group: V1Group, params: Dict[str, str], options: Options, plan_warnings:
                       List[str], placeholders: List[str]) -> Tuple[str, str, Optional[Resource]]:
    """(MLModelDestinationPath, where it came from, the ML resource) for the service."""
    resource = _ml_resource(group, params.get("MLModelResourceId"), options, plan_warnings)
    own = params.get("MLModelDestinationPath")
    destination = get(resource.data, "DestinationPath") if resource else None
    if options.model_path is not None:
        return options.model_path, "--model-path{}".format(
            " (V1's DestinationPath: {})".format(show(destination)) if destination else ""), resource
    if destination:
        if own and own != destination:
            plan_warnings.append("the connector's MLModelDestinationPath {} differs from the "
                                 "DestinationPath {} of resource {}; the resource's is used".format(
                                     show(own), show(destination), show(resource.id)))
        return destination, "DestinationPath of ML resource {}".format(show(resource.id)), resource
    if own:
        return own, "the connector's MLModelDestinationPath", resource
    placeholders.append("MLModelDestinationPath in params.yaml (no ML resource and no parameter "
                        "named the model directory): {}".format(PLACEHOLDER_MODEL))
    return PLACEHOLDER_MODEL, "placeholder", resource


def connector_parameters(group: V1Group, detector: Union[Connector, Function], options: Options,
                         warnings: List[str], placeholders: List[str]
                         ) -> Tuple[Dict[str, str], str, Optional[Resource]]:
    params = _raw_parameters(detector, warnings)
    for name, value in options.params:
        params[name] = value
    path, origin, resource = resolve_model_path(group, params, options, warnings, placeholders)
    params["MLModelDestinationPath"] = path
    try:
        parse_parameters(params)
    except ParameterError as exc:
        raise MigrationError("{}: {}; fix it in the V1 document or give --param NAME=VALUE{}".format(
            detector.where, exc, " (or --model-path DIR)" if "MLModelDestinationPath" in str(exc)
            else "")) from None
    if origin != "placeholder" and not os.path.isdir(path):
        warnings.append("the model directory {} does not exist on this machine: under V1 the core "
                        "mounted the model there inside the Lambda's container; copy the model "
                        "(the core keeps it under greengrass-root/ggc/deployment/) to a directory "
                        "of your own and run again with --model-path DIR".format(show(path)))
    ordered = {name: params[name] for name in RULES if name in params}
    return ordered, origin, resource


def _one(values: set, given: Optional[str], placeholder: str, what: str, option: str,
         warnings: List[str], placeholders: List[str]) -> str:
    if given:
        return given
    if len(values) == 1:
        return next(iter(values))
    if len(values) > 1:
        warnings.append("the documents name several {}s ({}): give {}".format(
            what, ", ".join(sorted(values)), option))
    placeholders.append("the {} in deployment.json's targetArn ({}): give {}".format(
        what, placeholder, option))
    return placeholder


def deployment_target(group: V1Group, options: Options, warnings: List[str],
                      placeholders: List[str]) -> Dict[str, str]:
    region = _one(group.regions, options.region, PLACEHOLDER_REGION, "region", "--region",
                  warnings, placeholders)
    account = _one(group.accounts, options.account, PLACEHOLDER_ACCOUNT, "account", "--account",
                   warnings, placeholders)
    thing_group = options.thing_group
    if not thing_group:
        thing_group = PLACEHOLDER_THING_GROUP
        placeholders.append("the thing group in deployment.json's targetArn ({}): give "
                            "--thing-group NAME".format(PLACEHOLDER_THING_GROUP))
    partition = next(iter(group.partitions)) if len(group.partitions) == 1 else "aws"
    return {"partition": partition, "region": region, "account": account,
            "thing_group": thing_group, "version": options.component_version}


def make_plan(group: V1Group, options: Options) -> Plan:
    warnings: List[str] = []
    placeholders: List[str] = []
    detector = choose_detector(group, options.connector_id)
    params, origin, resource = connector_parameters(group, detector, options, warnings,
                                                    placeholders)
    feedback = feedback_map.find(group, params.get("MLFeedbackConnectorConfigId", ""), warnings)
    allowed, not_mapped = allow_list(group.subscriptions)
    if "Subscriptions" not in group.origin:
        warnings.append("no subscription definition given: the MQTT allow-list is empty (callers "
                        "may publish nothing)")
    variant = DETECTOR.match(detector.name).group(1) if isinstance(detector, Connector) else None
    target = deployment_target(group, options, warnings, placeholders)
    return Plan(group, detector, variant, params, origin, resource, feedback, allowed, not_mapped,
                target, warnings, placeholders)
