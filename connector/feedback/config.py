"""Parameters of the feedback service: the original's two, plus the spool and retry settings.

``FeedbackConfigurationMap`` (JSON object ``{config-id: config}``) and ``RequestLimit`` keep the
AWS ML Feedback connector's names and rules; unknown keys of a config are ignored, as the original
does. Ours adds optional keys to a config (``local-directory``, ``budget``, ``conditions``) and
service parameters for the spool (see :data:`SERVICE_RULES`).

Like the connector's parameters, values come from a YAML/JSON file (top-level mapping, or the
``Parameters`` object of a connector entry) overlaid by environment variables of the same names.
A bad value stops start-up with a :class:`connector.errors.ParameterError` naming the config id,
the key and the rule.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Mapping, Optional

from ..errors import ParameterError
from ..params import read_parameter_file

CONFIG_ID_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9-]{1,62}$"
BUCKET_PATTERN = r"^[a-z0-9\.\-]{3,63}$"
REQUEST_LIMIT_PATTERN = r"^$|^[0-9]{1,3}$"

STRATEGIES = ("RANDOM_SAMPLING", "LEAST_CONFIDENCE", "MARGIN", "ENTROPY")

MAP_PARAMETER = "FeedbackConfigurationMap"
REQUEST_LIMIT_PARAMETER = "RequestLimit"

POLICY_REJECT_NEW = "reject-new"
POLICY_DROP_OLDEST = "drop-oldest"

# Defaults sized for a Raspberry Pi's SD card: a few hundred MB, a week of outage at most.
DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_SPOOL_MAX_ITEMS = 5000
DEFAULT_SPOOL_MAX_AGE_S = 7 * 24 * 3600

# name -> (pattern, default, meaning) of the service parameters beyond the original two.
SERVICE_RULES: Dict[str, Any] = {
    "FeedbackSpoolDirectory": (r".+", "", "directory of the on-disk spool (absolute path)"),
    "FeedbackSpoolMaxBytes": (r"^[1-9][0-9]*$", str(DEFAULT_SPOOL_MAX_BYTES),
                              "bytes the spool may hold"),
    "FeedbackSpoolMaxItems": (r"^[1-9][0-9]*$", str(DEFAULT_SPOOL_MAX_ITEMS),
                              "samples the spool may hold"),
    "FeedbackSpoolMaxAgeSeconds": (r"^[1-9][0-9]*$", str(DEFAULT_SPOOL_MAX_AGE_S),
                                   "age after which an undelivered sample fails as Expired"),
    "FeedbackSpoolFullPolicy": (r"^(reject-new|drop-oldest)$", POLICY_REJECT_NEW,
                                "what a full spool does: refuse the new sample or evict the oldest"),
    "FeedbackRetryMinSeconds": (r"^[0-9]+(\.[0-9]+)?$", "1", "first retry delay after a failure"),
    "FeedbackRetryMaxSeconds": (r"^[0-9]+(\.[0-9]+)?$", "300", "cap of the doubling retry delay"),
}
ALL_PARAMETERS = (MAP_PARAMETER, REQUEST_LIMIT_PARAMETER) + tuple(SERVICE_RULES)


@dataclass(frozen=True)
class Strategy:
    name: str
    rate: float = 0.0       # RANDOM_SAMPLING
    threshold: float = 0.0  # LEAST_CONFIDENCE, MARGIN, ENTROPY


@dataclass(frozen=True)
class Conditions:
    """Detection-aware conditions: a sample is eligible when one of its boxes (or, for a list of
    probabilities, its top class) has a listed class and a score inside [min_score, max_score]."""
    classes: Optional[FrozenSet[int]] = None
    min_score: Optional[float] = None
    max_score: Optional[float] = None
    cooldown_s: float = 0.0

    @property
    def filters(self) -> bool:
        return self.classes is not None or self.min_score is not None or self.max_score is not None


@dataclass(frozen=True)
class Budget:
    per_minute: Optional[int] = None
    per_hour: Optional[int] = None
    per_day: Optional[int] = None
    bytes_per_day: Optional[int] = None


@dataclass(frozen=True)
class FeedbackConfig:
    config_id: str
    content_type: str
    bucket: Optional[str] = None
    prefix: str = ""
    file_ext: str = ""
    strategy: Optional[Strategy] = None
    local_directory: Optional[str] = None
    conditions: Conditions = field(default_factory=Conditions)
    budget: Budget = field(default_factory=Budget)


@dataclass(frozen=True)
class FeedbackParameters:
    configs: Dict[str, FeedbackConfig]
    request_limit: int  # 0 = unbounded
    spool_directory: str
    spool_max_bytes: int
    spool_max_items: int
    spool_max_age_s: float
    spool_full_policy: str
    retry_min_s: float
    retry_max_s: float


def _bad(config_id: str, key: str, rule: str, value: Any) -> ParameterError:
    return ParameterError("{} config {!r}: key {!r} = {!r} {}".format(
        MAP_PARAMETER, config_id, key, value, rule))


def _number(config_id: str, key: str, value: Any, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        bound = "between {:g} and {:g}".format(low, high) if high != math.inf else ">= {:g}".format(low)
        raise _bad(config_id, key, "must be a number {}".format(bound), value)
    return float(value)


def _count(config_id: str, key: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(config_id, key, "must be a whole number >= 1", value)
    return value


def _string(config_id: str, key: str, value: Any, pattern: Optional[str] = None) -> str:
    if not isinstance(value, str) or (pattern and re.fullmatch(pattern, value) is None):
        raise _bad(config_id, key, "must be a string" + (" matching {}".format(pattern) if pattern
                                                         else ""), value)
    return value


def parse_strategy(config_id: str, raw: Any) -> Optional[Strategy]:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _bad(config_id, "sampling-strategy", "must be an object", raw)
    name = raw.get("strategy-name")
    if name not in STRATEGIES:
        raise _bad(config_id, "sampling-strategy.strategy-name", "must be one of " + ", ".join(STRATEGIES),
                   name)
    if name == "RANDOM_SAMPLING":
        return Strategy(name, rate=_number(config_id, "sampling-strategy.rate", raw.get("rate"), 0, 1))
    high = math.inf if name == "ENTROPY" else 1.0
    return Strategy(name, threshold=_number(config_id, "sampling-strategy.threshold",
                                            raw.get("threshold"), 0, high))


def parse_conditions(config_id: str, raw: Any) -> Conditions:
    if raw is None:
        return Conditions()
    if not isinstance(raw, dict):
        raise _bad(config_id, "conditions", "must be an object", raw)
    classes = raw.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not classes or any(
                isinstance(c, bool) or not isinstance(c, int) for c in classes):
            raise _bad(config_id, "conditions.classes", "must be a non-empty list of class numbers",
                       classes)
        classes = frozenset(classes)
    low = raw.get("min-score")
    high = raw.get("max-score")
    low = None if low is None else _number(config_id, "conditions.min-score", low, 0, 1)
    high = None if high is None else _number(config_id, "conditions.max-score", high, 0, 1)
    if low is not None and high is not None and low > high:
        raise _bad(config_id, "conditions.min-score", "must not be above max-score ({})".format(high), low)
    cooldown = raw.get("cooldown-seconds", 0)
    return Conditions(classes, low, high, _number(config_id, "conditions.cooldown-seconds", cooldown, 0))


def parse_budget(config_id: str, raw: Any) -> Budget:
    if raw is None:
        return Budget()
    if not isinstance(raw, dict):
        raise _bad(config_id, "budget", "must be an object", raw)
    return Budget(*(_count(config_id, "budget." + key, raw.get(key)) for key in (
        "samples-per-minute", "samples-per-hour", "samples-per-day", "bytes-per-day")))


def parse_config(config_id: Any, raw: Any) -> FeedbackConfig:
    if not isinstance(config_id, str) or re.fullmatch(CONFIG_ID_PATTERN, config_id) is None:
        raise ParameterError("{}: config id {!r} does not match {}".format(
            MAP_PARAMETER, config_id, CONFIG_ID_PATTERN))
    if not isinstance(raw, dict):
        raise ParameterError("{} config {!r} must be an object, not {}".format(
            MAP_PARAMETER, config_id, type(raw).__name__))
    local = raw.get("local-directory")
    if local is not None and not (isinstance(local, str) and os.path.isabs(local)):
        raise _bad(config_id, "local-directory", "must be an absolute path", local)
    bucket = raw.get("s3-bucket-name")
    if bucket is not None or local is None:  # required unless a local directory takes the samples
        if bucket is None:
            raise _bad(config_id, "s3-bucket-name", "is required (or give local-directory)", bucket)
        bucket = _string(config_id, "s3-bucket-name", bucket, BUCKET_PATTERN)
    if "content-type" not in raw:
        raise _bad(config_id, "content-type", "is required", None)
    return FeedbackConfig(
        config_id=config_id,
        content_type=_string(config_id, "content-type", raw["content-type"], r".+"),
        bucket=bucket,
        prefix=_string(config_id, "s3-prefix", raw.get("s3-prefix", "")),
        file_ext=_string(config_id, "file-ext", raw.get("file-ext", ""), r"[^/]*"),
        strategy=parse_strategy(config_id, raw.get("sampling-strategy")),
        local_directory=local,
        conditions=parse_conditions(config_id, raw.get("conditions")),
        budget=parse_budget(config_id, raw.get("budget")),
    )


def parse_configuration_map(raw: Any) -> Dict[str, FeedbackConfig]:
    """A JSON text (as Greengrass delivers it) or an already parsed mapping."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ParameterError("{} is not valid JSON: {}".format(MAP_PARAMETER, exc)) from None
    if not isinstance(raw, dict) or not raw:
        raise ParameterError("{} must be a non-empty JSON object {{config-id: config}}".format(
            MAP_PARAMETER))
    return {config_id: parse_config(config_id, config) for config_id, config in raw.items()}


def default_spool_directory(environ: Mapping[str, str]) -> str:
    state = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "greengrass-ml", "feedback-spool")


def _service_value(values: Mapping[str, Any], name: str) -> str:
    pattern, default, meaning = SERVICE_RULES[name]
    raw = values.get(name)
    text = default if raw is None or raw == "" else str(raw)
    if text and re.fullmatch(pattern, text) is None:
        raise ParameterError("parameter {}={!r} does not match the rule {} ({})".format(
            name, text, pattern, meaning))
    return text


def parse_parameters(values: Mapping[str, Any], environ: Optional[Mapping[str, str]] = None
                     ) -> FeedbackParameters:
    env = os.environ if environ is None else environ
    if values.get(MAP_PARAMETER) is None:
        raise ParameterError("parameter {} is missing; it is required (JSON object {{config-id: "
                             "config}})".format(MAP_PARAMETER))
    configs = parse_configuration_map(values[MAP_PARAMETER])
    limit = values.get(REQUEST_LIMIT_PARAMETER)
    limit_text = "" if limit is None else str(limit)
    if isinstance(limit, bool) or re.fullmatch(REQUEST_LIMIT_PATTERN, limit_text) is None:
        raise ParameterError("parameter {}={!r} does not match the rule {} (bound of the request "
                             "queue; empty or 0 = unbounded)".format(REQUEST_LIMIT_PARAMETER, limit,
                                                                     REQUEST_LIMIT_PATTERN))
    spool = _service_value(values, "FeedbackSpoolDirectory") or default_spool_directory(env)
    if not os.path.isabs(spool):
        raise ParameterError("parameter FeedbackSpoolDirectory={!r} must be an absolute path".format(spool))
    retry_min = float(_service_value(values, "FeedbackRetryMinSeconds"))
    retry_max = float(_service_value(values, "FeedbackRetryMaxSeconds"))
    if retry_max < retry_min:
        raise ParameterError("parameter FeedbackRetryMaxSeconds={:g} must not be below "
                             "FeedbackRetryMinSeconds={:g}".format(retry_max, retry_min))
    return FeedbackParameters(
        configs=configs,
        request_limit=int(limit_text or 0),
        spool_directory=spool,
        spool_max_bytes=int(_service_value(values, "FeedbackSpoolMaxBytes")),
        spool_max_items=int(_service_value(values, "FeedbackSpoolMaxItems")),
        spool_max_age_s=float(_service_value(values, "FeedbackSpoolMaxAgeSeconds")),
        spool_full_policy=_service_value(values, "FeedbackSpoolFullPolicy"),
        retry_min_s=retry_min,
        retry_max_s=retry_max,
    )


def read_file(path: str) -> Dict[str, Any]:
    return read_parameter_file(path, ALL_PARAMETERS, "feedback parameter")


def load_parameters(path: Optional[str] = None, environ: Optional[Mapping[str, str]] = None
                    ) -> Optional[FeedbackParameters]:
    """The feedback parameters from `path` overlaid by the environment; None when neither names a
    FeedbackConfigurationMap (the feedback service is then not run)."""
    env = os.environ if environ is None else environ
    values: Dict[str, Any] = read_file(path) if path else {}
    for name in ALL_PARAMETERS:
        if name in env:
            values[name] = env[name]
    if values.get(MAP_PARAMETER) is None and not path:
        return None
    return parse_parameters(values, env)
