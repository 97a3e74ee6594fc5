"""The ML Feedback connector of a V1 group, mapped to this project's feedback service.

The AWS ML Feedback connector (``arn:aws:greengrass:<region>::/connectors/MLFeedback/versions/1``)
takes ``FeedbackConfigurationMap`` (a JSON text) and ``RequestLimit``; this project's feedback
service takes the same names and rules (SPEC section 6), so they are carried as they are into
``feedback.yaml`` for ``serve --feedback-config`` once they pass :mod:`connector.feedback.config`.
A group that ran this project's own feedback Lambda gives its environment instead.

A map that fails those rules is reported and feedback.yaml is not written: the object-detection
service still migrates (it never waits for feedback).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from ...errors import ParameterError
from ...feedback import config as feedback_config
from .group import Connector, Function, V1Group
from .source import show

FEEDBACK_CONNECTOR = "MLFeedback"
FEEDBACK_HANDLER = "connector.feedback.lambda_function.function_handler"


@dataclass(frozen=True)
class Feedback:
    source: Union[Connector, Function]
    values: Optional[Dict[str, str]]       # what feedback.yaml holds; None when unusable
    problem: Optional[str]
    config_ids: Tuple[str, ...]


def _sources(group: V1Group) -> List[Union[Connector, Function]]:
    found: List[Union[Connector, Function]] = [c for c in group.connectors
                                               if c.name == FEEDBACK_CONNECTOR]
    return found + [f for f in group.functions if f.executable == FEEDBACK_HANDLER]


def _values(source: Union[Connector, Function]) -> Tuple[Dict[str, str], Optional[str]]:
    """The feedback parameters of `source` and the first problem with them (None when usable)."""
    raw = source.parameters if isinstance(source, Connector) else source.variables
    values = {k: v for k, v in raw.items() if k in feedback_config.ALL_PARAMETERS}
    for name, value in values.items():
        if not isinstance(value, str):
            return values, "parameter {} must be a string, not {}".format(name,
                                                                         type(value).__name__)
    try:  # the map's depth is capped there, before it is parsed
        feedback_config.parse_parameters(values)
    except ParameterError as exc:
        return values, str(exc)
    return values, None


def find(group: V1Group, config_id: str, warnings: List[str]) -> Optional[Feedback]:
    """The group's feedback service, checked; warnings for what does not fit together."""
    sources = _sources(group)
    if not sources:
        if config_id:
            warnings.append("MLFeedbackConnectorConfigId is {} but the group has no ML Feedback "
                            "connector: samples go nowhere until serve gets --feedback-config"
                            .format(show(config_id)))
        return None
    if len(sources) > 1:
        warnings.append("{} ML Feedback connectors; the first ({}) is migrated".format(
            len(sources), show(sources[0].id)))
    source = sources[0]
    values, problem = _values(source)
    spool = values.pop("FeedbackSpoolDirectory", None)
    if spool is not None and problem is None:
        warnings.append("{}: FeedbackSpoolDirectory {} was a path inside the V1 Lambda's container: "
                        "not carried (the service's default spool directory is used)".format(
                            source.where, show(spool)))
    if problem:
        warnings.append("{}: ML Feedback parameters not usable, feedback.yaml not written: {}"
                        .format(source.where, show(problem, 300)))
        return Feedback(source, None, problem, ())
    ids = tuple(sorted(feedback_config.parse_configuration_map(
        values[feedback_config.MAP_PARAMETER])))
    if config_id and config_id not in ids:
        warnings.append("MLFeedbackConnectorConfigId {} is not a config id of the ML Feedback "
                        "connector ({})".format(show(config_id), ", ".join(ids)))
    return Feedback(source, values, None, ids)
