"""The interface-version check every client runs when it is constructed."""
from __future__ import annotations

import os
import re
from typing import Mapping, Optional, Tuple

ENV_MAX_INTERFACE_VERSION = "GGC_MAX_INTERFACE_VERSION"

# This SDK speaks Greengrass interface 1.2 (the ML inference/feedback services), so it runs on
# any core whose maximum interface is 1.x with x >= 2.
SDK_INTERFACE_VERSION = (1, 2)

_VERSION = re.compile(r"^\s*(\d+)\.(\d+)\s*$")


def parse_version(value: str) -> Tuple[int, int]:
    """(major, minor) of "major.minor"; ValueError for anything else."""
    match = _VERSION.match(value)
    if not match:
        raise ValueError("{}={!r} is not a version of the form <major>.<minor> (e.g. 1.5)".format(
            ENV_MAX_INTERFACE_VERSION, value))
    return int(match.group(1)), int(match.group(2))


class ValidationUtil(object):
    @staticmethod
    def validate_required_gg_interface(environ: Optional[Mapping[str, str]] = None) -> None:
        """Raise ValueError when the core's GGC_MAX_INTERFACE_VERSION (where set) is too old or
        of another major version; without it (standalone) there is nothing to check."""
        env = os.environ if environ is None else environ
        value = env.get(ENV_MAX_INTERFACE_VERSION)
        if not value:
            return
        major, minor = parse_version(value)
        if major != SDK_INTERFACE_VERSION[0] or minor < SDK_INTERFACE_VERSION[1]:
            raise ValueError(
                "There was a version incompatibility between the Greengrass Machine Learning SDK "
                "used by your function and the Greengrass Core: the SDK needs interface {}.{} or "
                "a later 1.x, the core offers {}={}. Please visit the AWS Greengrass Developer "
                "Guide for version compatibility information".format(
                    SDK_INTERFACE_VERSION[0], SDK_INTERFACE_VERSION[1], ENV_MAX_INTERFACE_VERSION,
                    value))
