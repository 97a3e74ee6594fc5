"""What a spool record must be before the service uses it: records on disk are untrusted.

A record is the JSON object of one spool entry (``<seq>-<id>.json``). :func:`validate_record`
checks every field the delivery reads; keys and file names are later built from the validated
sample uuid and the config, never from a path in the record.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, Optional

from . import gate as gates
from .config import CONFIG_ID_PATTERN, PREDICTION_MAX_BYTES, check_metadata, check_prediction

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
# A record holds a capped prediction and metadata plus a few small delivery responses.
MAX_RECORD_BYTES = PREDICTION_MAX_BYTES + 64 * 1024
_MAX_TEXT = 4096
VERDICTS = frozenset([gates.KEPT, gates.DROPPED_BY_CONDITION, gates.DROPPED_BY_STRATEGY,
                      gates.DROPPED_BY_COOLDOWN, gates.DROPPED_BY_BUDGET])


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_text(value: Any, pattern: Optional[str] = None) -> bool:
    return isinstance(value, str) and len(value) <= _MAX_TEXT and (
        pattern is None or re.fullmatch(pattern, value) is not None)


def _sample_of(record: Dict[str, Any]) -> Optional[str]:
    """The sample uuid; a record of an earlier version has only its key, ``[prefix/]<uuid>[.ext]``."""
    sample = record.get("sample")
    if sample is None and isinstance(record.get("key"), str):
        sample = record["key"].rsplit("/", 1)[-1].split(".", 1)[0]
    return sample if _is_text(sample, UUID_PATTERN) else None


def validate_record(record: Any, name: str) -> Dict[str, Any]:
    """The record of entry `name` as the service may use it; ValueError naming what is wrong.

    ``id`` (the entry's), ``config-id``, ``accepted`` (a time), ``kept`` and ``verdict`` (agreeing),
    ``prediction``, ``metadata`` (the request's caps), for a kept sample ``sample`` (a uuid4: keys and
    file names are built from it and the config, never from a path in the record) and optionally
    ``image-bytes``; progress: ``failure``, ``s3_response``, ``local_response``, ``prediction_sent``."""
    _require(isinstance(record, dict), "the record is not an object")
    _require(_is_text(record.get("id"), ID_PATTERN) and name.split("-", 1)[-1] == record["id"],
             "'id' is missing, does not match {} or is not the entry's".format(ID_PATTERN))
    _require(_is_text(record.get("config-id"), CONFIG_ID_PATTERN), "'config-id' is missing or malformed")
    accepted = record.get("accepted")
    _require(isinstance(accepted, (int, float)) and not isinstance(accepted, bool)
             and math.isfinite(accepted) and accepted >= 0, "'accepted' is not a time in seconds")
    _require(isinstance(record.get("kept"), bool), "'kept' is not true or false")
    _require(record.get("verdict") in VERDICTS and record["kept"] == (record["verdict"] == gates.KEPT),
             "'verdict' is not one of the gate's or disagrees with 'kept'")
    check_prediction(record.get("prediction"))
    _require(isinstance(record.get("metadata"), dict), "'metadata' is not an object")
    check_metadata(record["metadata"])
    clean = dict(record)
    if record["kept"]:
        clean["sample"] = _sample_of(record)
        _require(clean["sample"] is not None, "'sample' is not a uuid4 (nor is the key's name)")
        size = record.get("image-bytes")
        _require(size is None or (isinstance(size, int) and not isinstance(size, bool) and size >= 0),
                 "'image-bytes' is not a size")
    failure = record.get("failure")
    _require(failure is None or (isinstance(failure, dict) and failure.get("status") == "fail"
                                 and _is_text(failure.get("error"))
                                 and isinstance(failure.get("error_message"), str)),
             "'failure' is not a fail status")
    for key in ("s3_response", "local_response"):
        _require(record.get(key) is None or isinstance(record[key], dict), "{!r} is not an object".format(key))
    _require(isinstance(record.get("prediction_sent", False), bool), "'prediction_sent' is not true or false")
    return clean
