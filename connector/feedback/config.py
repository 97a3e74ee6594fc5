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

import grp
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, List, Mapping, Optional

from .. import settings
from ..config_files import MAX_DEPTH as MAP_MAX_DEPTH
from ..errors import ParameterError, excerpt
from ..ipc.protocol import nesting_exceeds
from ..params import read_parameter_file

CONFIG_ID_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9-]{1,62}$"
BUCKET_PATTERN = r"^[a-z0-9\.\-]{3,63}$"
REQUEST_LIMIT_PATTERN = r"^$|^[0-9]{1,3}$"
# Letters and digits after an optional dot: the extension becomes part of a file name and a key.
FILE_EXT_PATTERN = r"^(\.?[A-Za-z0-9]{1,16})?$"
# What S3 and a file system both take as a Content-Type: printable ASCII (it is an HTTP header).
CONTENT_TYPE_PATTERN = r"^[!-~][ -~]{0,254}$"
GROUP_PATTERN = r"^$|^[0-9]{1,10}$|^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$"
MAX_PREFIX_CHARS = 512

STRATEGIES = ("RANDOM_SAMPLING", "LEAST_CONFIDENCE", "MARGIN", "ENTROPY")

MAP_PARAMETER = "FeedbackConfigurationMap"
REQUEST_LIMIT_PARAMETER = "RequestLimit"

POLICY_REJECT_NEW = "reject-new"
POLICY_DROP_OLDEST = "drop-oldest"

# Defaults sized for a Raspberry Pi's SD card: a few hundred MB, a week of outage at most.
DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_SPOOL_MAX_ITEMS = 5000
DEFAULT_SPOOL_MAX_AGE_S = 7 * 24 * 3600
DEFAULT_LOCAL_MAX_BYTES = 256 * 1024 * 1024

# Caps of what a caller sends with a sample. Metadata becomes S3 user metadata, which S3 limits to
# 2 KB (keys and values, UTF-8); a prediction is a detection document or a probability list, a few
# KB, kept in the spool record and sent over MQTT.
METADATA_MAX_KEYS = 32
METADATA_MAX_BYTES = 2048
PREDICTION_MAX_BYTES = 256 * 1024
PREDICTION_MAX_DEPTH = 16

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
    "FeedbackFilesGroup": (GROUP_PATTERN, "", "group (name or gid) that may read the samples written "
                                              "to a local-directory (0750/0640); empty: 0700/0600"),
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
    local_max_bytes: int = DEFAULT_LOCAL_MAX_BYTES
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
    files_gid: Optional[int] = None  # FeedbackFilesGroup, resolved


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


def path_escape(value: str) -> Optional[str]:
    """What in `value` (a path or a key) could lead a name outside its directory or confuse a
    reader: a control character, a backslash, a '.' or '..' segment; None when nothing."""
    if any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in value):
        return "a control character"
    if "\\" in value:
        return "a backslash"
    if any(segment in (".", "..") for segment in value.split("/")):
        return "a '.' or '..' segment"
    return None


def _prefix(config_id: str, value: Any) -> str:
    """s3-prefix: surrounding slashes are stripped (the original's rule); what is left becomes
    directories under local-directory and the start of every S3 key, so it must stay relative."""
    text = _string(config_id, "s3-prefix", value)
    inner = text.strip("/")
    rule = "must be a relative key prefix (surrounding slashes are stripped) of at most {} " \
           "characters without empty segments".format(MAX_PREFIX_CHARS)
    escape = path_escape(inner)
    if escape is not None:
        raise _bad(config_id, "s3-prefix", "{}; it has {}".format(rule, escape), value)
    if len(inner) > MAX_PREFIX_CHARS or "//" in inner:
        raise _bad(config_id, "s3-prefix", rule, value)
    return text


def absolute_path(name: str, value: Any) -> str:
    """The rule for an operator's directory: an absolute path without escapes. Returns the reason
    it breaks, or "" (the caller names the parameter or the config key)."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return "must be an absolute path"
    escape = path_escape(value)
    if escape is not None:
        return "must be an absolute path without control characters, backslashes or '.'/'..' " \
               "segments; it has {}".format(escape)
    return ""


def normal_path(value: str) -> str:
    """An operator's directory (one :func:`absolute_path` accepts) as it is used: without a
    trailing or doubled slash. A trailing slash makes lstat, and open with O_NOFOLLOW, follow
    a symbolic link at the last segment, which the link checks must see. (normpath keeps a
    leading "//", which Linux reads as "/".)"""
    path = os.path.normpath(value)
    return "/" + path.lstrip("/") if path.startswith("//") else path


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
    if local is not None and absolute_path("local-directory", local):
        raise _bad(config_id, "local-directory", absolute_path("local-directory", local), local)
    if local is not None:
        local = normal_path(local)
    bucket = raw.get("s3-bucket-name")
    if bucket is not None or local is None:  # required unless a local directory takes the samples
        if bucket is None:
            raise _bad(config_id, "s3-bucket-name", "is required (or give local-directory)", bucket)
        bucket = _string(config_id, "s3-bucket-name", bucket, BUCKET_PATTERN)
    if "content-type" not in raw:
        raise _bad(config_id, "content-type", "is required", None)
    return FeedbackConfig(
        config_id=config_id,
        content_type=_string(config_id, "content-type", raw["content-type"], CONTENT_TYPE_PATTERN),
        bucket=bucket,
        prefix=_prefix(config_id, raw.get("s3-prefix", "")),
        file_ext=_string(config_id, "file-ext", raw.get("file-ext", ""), FILE_EXT_PATTERN),
        strategy=parse_strategy(config_id, raw.get("sampling-strategy")),
        local_directory=local,
        local_max_bytes=_count(config_id, "local-directory-max-bytes",
                               raw.get("local-directory-max-bytes")) or DEFAULT_LOCAL_MAX_BYTES,
        conditions=parse_conditions(config_id, raw.get("conditions")),
        budget=parse_budget(config_id, raw.get("budget")),
    )


def parse_configuration_map(raw: Any) -> Dict[str, FeedbackConfig]:
    """A JSON text (as Greengrass delivers it) or an already parsed mapping. The text's depth is
    checked before it is parsed (json.loads of a deep one raises RecursionError, not ValueError),
    with the parameter files' cap: a parsed mapping came through that cap already."""
    if isinstance(raw, str):
        if nesting_exceeds(raw, MAP_MAX_DEPTH):
            raise ParameterError("{} is nested deeper than {} levels; a real one has at most 4".format(
                MAP_PARAMETER, MAP_MAX_DEPTH))
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ParameterError("{} is not valid JSON: {}".format(MAP_PARAMETER, exc)) from None
    if not isinstance(raw, dict) or not raw:
        raise ParameterError("{} must be a non-empty JSON object {{config-id: config}}".format(
            MAP_PARAMETER))
    return {config_id: parse_config(config_id, config) for config_id, config in raw.items()}


def default_spool_directory(environ: Optional[Mapping[str, str]] = None) -> str:
    state = settings.get("XDG_STATE_HOME", environ) or os.path.join(
        settings.get("HOME", environ) or os.path.expanduser("~"), ".local", "state")
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
    env = settings.environment(environ)
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
    if absolute_path("FeedbackSpoolDirectory", spool):
        raise ParameterError("parameter FeedbackSpoolDirectory={!r} {}".format(
            spool, absolute_path("FeedbackSpoolDirectory", spool)))
    spool = normal_path(spool)
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
        files_gid=files_group(_service_value(values, "FeedbackFilesGroup")),
    )


def files_group(text: str) -> Optional[int]:
    """FeedbackFilesGroup as a gid this user may give files to (None when not set)."""
    if not text:
        return None
    try:
        gid = int(text) if text.isdigit() else grp.getgrnam(text).gr_gid
    except KeyError:
        raise ParameterError("parameter FeedbackFilesGroup={!r}: no such group".format(text)) from None
    if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        raise ParameterError("parameter FeedbackFilesGroup={!r}: this user (uid {}) is not a member of "
                             "group {}, so it cannot give files to it".format(text, os.geteuid(), gid))
    return gid


def check_metadata(metadata: Any) -> Dict[str, str]:
    """A request's Metadata: ValueError naming the rule when it is not a small object of strings."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValueError("Metadata must be an object of strings, not {}".format(type(metadata).__name__))
    if len(metadata) > METADATA_MAX_KEYS:
        raise ValueError("Metadata has {} keys; at most {} are allowed".format(len(metadata),
                                                                                METADATA_MAX_KEYS))
    total = 0
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise ValueError("Metadata must map non-empty strings to strings; {}: {} does not".format(
                excerpt(key, 100), excerpt(value, 100)))
        # S3 user metadata travels in HTTP headers: printable ASCII only.
        if not all(" " <= c <= "~" for c in key + value):
            raise ValueError("Metadata must be printable ASCII (S3 user metadata); {}: {} is "
                             "not".format(excerpt(key, 100), excerpt(value, 100)))
        total += len(key) + len(value)
    if total > METADATA_MAX_BYTES:
        raise ValueError("Metadata holds {} bytes of keys and values; at most {} are allowed (the S3 "
                         "user-metadata limit)".format(total, METADATA_MAX_BYTES))
    return metadata


def check_prediction(prediction: Any) -> None:
    """A request's ModelPrediction: a non-empty list or object, at most PREDICTION_MAX_DEPTH
    levels deep and PREDICTION_MAX_BYTES as JSON; ValueError naming the rule otherwise."""
    if not isinstance(prediction, (list, dict)) or not prediction:
        raise ValueError("ModelPrediction must be a non-empty list or object")
    # Depth first and without recursion: json.dumps of a deep document would hit the recursion limit.
    pending: List[Any] = [(prediction, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > PREDICTION_MAX_DEPTH:
            raise ValueError("ModelPrediction is nested more than {} levels deep".format(
                PREDICTION_MAX_DEPTH))
        children = value.values() if isinstance(value, dict) else value
        pending.extend((c, depth + 1) for c in children if isinstance(c, (list, dict)))
    try:
        size = len(json.dumps(prediction).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise ValueError("ModelPrediction must be plain JSON: {}".format(exc)) from None
    if size > PREDICTION_MAX_BYTES:
        raise ValueError("ModelPrediction is {} bytes as JSON; at most {} are allowed".format(
            size, PREDICTION_MAX_BYTES))


def read_file(path: str) -> Dict[str, Any]:
    return read_parameter_file(path, ALL_PARAMETERS, "feedback parameter")


def load_parameters(path: Optional[str] = None, environ: Optional[Mapping[str, str]] = None
                    ) -> Optional[FeedbackParameters]:
    """The feedback parameters from `path` overlaid by the environment; None when neither names a
    FeedbackConfigurationMap (the feedback service is then not run)."""
    values: Dict[str, Any] = read_file(path) if path else {}
    values.update(settings.overlay(ALL_PARAMETERS, environ))
    if values.get(MAP_PARAMETER) is None and not path:
        return None
    return parse_parameters(values, environ)
