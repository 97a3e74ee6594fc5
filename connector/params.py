"""Connector parameters: the seed's names, patterns and defaults.

Greengrass delivers every value as a string, through environment variables named exactly like the
parameters. Standalone, the same names can come from a YAML or JSON file whose top-level mapping
uses them (the ``Parameters`` object of ``aws greengrass create-connector-definition`` works as is).
Environment variables win over the file, so one file can serve several deployments.

The file is untrusted input: it is read through :mod:`connector.config_files` (size cap, UTF-8,
no YAML aliases), numbers are range-checked (``maximum`` of a rule), and messages quote values
only as short excerpts.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional

from . import settings
from .config_files import load_file
from .errors import ConfigFileError, ParameterError, excerpt

SERVICE_NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9-]{1,62}$"
POSITIVE_INT_PATTERN = r"^[1-9][0-9]*$"
# The longest LocalInferenceServiceTimeoutSeconds accepted: Lambda's own maximum function timeout.
MAX_TIMEOUT_SECONDS = 900
# 1 TiB: beyond any edge device; larger numbers are typing mistakes.
MAX_MEMORY_LIMIT_KB = 1024 ** 3


@dataclass(frozen=True)
class Rule:
    pattern: str
    required: bool = True
    default: Optional[str] = None
    meaning: str = ""
    maximum: Optional[int] = None  # for numbers


# name -> rule; the patterns are the seed's, verbatim.
RULES: Dict[str, Rule] = {
    "MLModelDestinationPath": Rule(r".+", meaning="absolute path of the local model directory"),
    "MLModelResourceId": Rule(r"^[a-zA-Z0-9:_-]+$", meaning="id of the ML resource"),
    "LocalInferenceServiceName": Rule(SERVICE_NAME_PATTERN,
                                      meaning="name clients pass as ServiceName"),
    "LocalInferenceServiceTimeoutSeconds": Rule(POSITIVE_INT_PATTERN, default="10",
                                                meaning="seconds before a request fails",
                                                maximum=MAX_TIMEOUT_SECONDS),
    "LocalInferenceServiceMemoryLimitKB": Rule(POSITIVE_INT_PATTERN,
                                               meaning="memory the inference service may use",
                                               maximum=MAX_MEMORY_LIMIT_KB),
    # Required only by the Jetson variant; CPU elsewhere.
    "GPUAcceleration": Rule(r"^(CPU|GPU)$", required=False, default="CPU",
                            meaning="compute context, CPU or GPU"),
    "MLFeedbackConnectorConfigId": Rule(r"^$|^[a-zA-Z0-9][a-zA-Z0-9-]{1,62}$", required=False,
                                        default="", meaning="ML Feedback configuration id"),
}


@dataclass(frozen=True)
class Parameters:
    model_path: str
    model_resource_id: str
    service_name: str
    timeout_seconds: int
    memory_limit_kb: int
    gpu: bool
    feedback_config_id: str

    @property
    def device(self) -> str:
        return "gpu" if self.gpu else "cpu"


def load_parameters(file: Optional[str] = None,
                    environ: Optional[Mapping[str, str]] = None) -> Parameters:
    """Read parameters from `file` (YAML/JSON, optional) overlaid by `environ` (default: the
    process's environment)."""
    values: Dict[str, Any] = read_parameter_file(file) if file else {}
    values.update(settings.overlay(RULES, environ))
    return parse_parameters(values)


def read_parameter_file(path: str, known: Iterable[str] = tuple(RULES), kind: str = "parameter"
                        ) -> Dict[str, Any]:
    """The mapping of a YAML/JSON parameter file; `known` are the names it may hold, `kind` names
    the file in errors (the feedback service reads its own parameters the same way)."""
    known = tuple(known)
    try:
        data = load_file(path, "{} file".format(kind))
    except ConfigFileError as e:
        raise ParameterError(str(e)) from None
    if isinstance(data, dict) and isinstance(data.get("Parameters"), dict):
        data = data["Parameters"]  # a whole connector entry of create-connector-definition
    if not isinstance(data, dict):
        raise ParameterError("{} file {!r} must hold a mapping of parameter names to values"
                             .format(kind, path))
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ParameterError("{} file {} has unknown parameter(s) {}; known: {}".format(
            kind, excerpt(path, 300), ", ".join(excerpt(k, 40) for k in unknown[:5]),
            ", ".join(known)))
    return data


def parse_parameters(values: Mapping[str, Any]) -> Parameters:
    """Check every value against its rule; the first failure raises ParameterError naming it."""
    checked: Dict[str, str] = {}
    for name, rule in RULES.items():
        raw = values.get(name)
        if raw is None:
            if rule.required and rule.default is None:
                raise ParameterError("parameter {} is missing; it is required ({}, pattern {})"
                                     .format(name, rule.meaning, rule.pattern))
            raw = rule.default
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise ParameterError("parameter {}={} must be a string matching {}".format(
                name, excerpt(raw), rule.pattern))
        text = str(raw)
        if "\0" in text:
            raise ParameterError("parameter {}={} contains a NUL byte".format(name, excerpt(text)))
        # fullmatch: with re.match, `$` would also accept a trailing newline
        if re.fullmatch(rule.pattern, text) is None:
            raise ParameterError("parameter {}={} does not match the rule {} ({})".format(
                name, excerpt(text), rule.pattern, rule.meaning))
        if rule.maximum is not None and int(text) > rule.maximum:
            raise ParameterError("parameter {}={} is above the maximum of {} ({}; rule: {} and at "
                                 "most {})".format(name, excerpt(text), rule.maximum, rule.meaning,
                                                   rule.pattern, rule.maximum))
        checked[name] = text
    path = checked["MLModelDestinationPath"]
    if not os.path.isabs(path):
        raise ParameterError("parameter MLModelDestinationPath={} must be an absolute path".format(
            excerpt(path)))
    return Parameters(
        model_path=path,
        model_resource_id=checked["MLModelResourceId"],
        service_name=checked["LocalInferenceServiceName"],
        timeout_seconds=int(checked["LocalInferenceServiceTimeoutSeconds"]),
        memory_limit_kb=int(checked["LocalInferenceServiceMemoryLimitKB"]),
        gpu=checked["GPUAcceleration"] == "GPU",
        feedback_config_id=checked["MLFeedbackConnectorConfigId"],
    )

