"""Every environment variable the runtime reads, in one table, read in this module only.

The connector's and the feedback service's *parameters* (SPEC sections 2 and 6) may also come from
the environment under their own names; :func:`overlay` reads those for :mod:`connector.params` and
:mod:`connector.feedback.config`, which own their rules. Everything else is a *setting*: declared
in :data:`TABLE` (name, default, meaning) and read with :func:`get`, so that the table is the whole
truth (``docs/settings.md`` prints it; a test holds the two together, and another that no other
module reads the environment).

Values are untrusted: each reader that interprets one (a number, a path) checks it and raises
:class:`connector.errors.ParameterError` naming the variable, through helpers here where the
rule is shared (:func:`seconds`).
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from .errors import ParameterError, excerpt
from .files import code_directory_reason


class Setting(NamedTuple):
    name: str
    default: str
    meaning: str


# Set by a Greengrass core in a Lambda's environment (SPEC section 4); read where we play a Lambda.
GREENGRASS: Tuple[Setting, ...] = (
    Setting("AWS_CONTAINER_AUTHORIZATION_TOKEN", "", "the function's own IPC token (a core sets it)"),
    Setting("MY_FUNCTION_ARN", "", "the function's ARN (a core sets it)"),
    Setting("GG_DAEMON_PORT", "8000", "the IPC port of the core, or of the standalone host"),
    Setting("AWS_REGION", "us-east-1", "the region in the service addresses the SDK builds"),
)

TABLE: Tuple[Setting, ...] = GREENGRASS + (
    # the inference workers
    Setting("CONNECTOR_INFERENCE_WORKERS", "auto",
            "inference worker processes: 1-16, or auto (one per CPU, at most 4, as many as fit in "
            "memory)"),
    Setting("CONNECTOR_MODEL_WATCH_SECONDS", "2",
            "how often the model directory is checked for a new version; 0 turns watching off"),
    Setting("CONNECTOR_MODEL_LOAD_TIMEOUT_SECONDS", "120",
            "how long a worker may take to import its runtime and load the model"),
    Setting("CONNECTOR_INTRA_OP_THREADS", "",
            "threads a runtime may use for one inference (set by the pool for every worker but "
            "the first; empty: the runtime's default)"),
    # logging
    Setting("CONNECTOR_REQUEST_LOG_LEVEL", "",
            "level of the one-line-per-request log (DEBUG, INFO, WARNING, ERROR); empty: the "
            "service's level"),
    # the Greengrass entry points
    Setting("CONNECTOR_NO_BOOTSTRAP", "",
            "1: importing a Lambda entry module does not start its service (tools and tests)"),
    Setting("GG_ML_SITE_PACKAGES", "",
            "site-packages directories (os.pathsep-separated) that provide NumPy, OpenCV and the "
            "runtime to a Lambda package built with --deps device; each absolute and, with its "
            "*.pth files, writable only by root or this user (else importing connector fails)"),
    # finding and publishing the standalone host
    Setting("GG_ML_IPC_FILE", "", "the client file's path (default: $XDG_RUNTIME_DIR/greengrass-ml/"
            "ipc.json, else ~/.config/greengrass-ml/ipc.json)"),
    Setting("XDG_RUNTIME_DIR", "", "the per-user runtime directory (the client file's default home)"),
    Setting("XDG_STATE_HOME", "", "the per-user state directory (the feedback spool's default home)"),
    Setting("HOME", "", "the user's home directory (defaults under ~/.config and ~/.local/state)"),
    # the feedback feed and the S3 destination
    Setting("GG_ML_FEEDBACK_FUNCTION_ARN", "",
            "the ML Feedback service's address when it is not arn:aws:lambda:<region>:aws:function:"
            "MLFeedback (e.g. a user Lambda inside Greengrass V1)"),
    Setting("AWS_ENDPOINT_URL_S3", "", "an S3-compatible store's endpoint for feedback samples"),
    Setting("AWS_ENDPOINT_URL", "", "the same for every AWS service (AWS_ENDPOINT_URL_S3 wins)"),
    # the standalone host's GGRouter (MQTT)
    Setting("GG_MQTT_URL", "", "the broker GGRouter forwards to: mqtt://HOST[:PORT] or mqtts://..."),
    Setting("GG_MQTT_CLIENT_ID", "", "the MQTT client id (default greengrass-ml-<hostname>-<pid>)"),
    Setting("GG_MQTT_CA_FILE", "", "CA certificate(s) for TLS to the broker"),
    Setting("GG_MQTT_CERT_FILE", "", "client certificate, e.g. an AWS IoT device certificate"),
    Setting("GG_MQTT_KEY_FILE", "", "its private key"),
    Setting("GG_MQTT_MAX_QUEUED", "10000", "MQTT messages that may wait for the broker"),
    Setting("GG_MQTT_MAX_QUEUED_BYTES", str(16 * 1024 * 1024),
            "payload bytes those messages may hold (at least 131072, one message of the largest size)"),
    Setting("GG_MQTT_ALLOW", "", "MQTT topic filters (comma-separated) callers may publish to "
            "through GGRouter; empty: none (--mqtt-allow adds to it)"),
)
BY_NAME: Dict[str, Setting] = {s.name: s for s in TABLE}


def environment(environ: Optional[Mapping[str, str]] = None) -> Mapping[str, str]:
    """The mapping settings are read from: `environ` when given (tests, a Lambda's), else the
    process's environment."""
    return os.environ if environ is None else environ


def raw(name: str, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The variable as set (None when unset); `name` must be in the table."""
    if name not in BY_NAME:
        raise KeyError("{} is not a declared setting (connector.settings.TABLE)".format(name))
    return environment(environ).get(name)


def get(name: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """The variable stripped of blanks, or its default when unset or blank."""
    value = (raw(name, environ) or "").strip()
    return value or BY_NAME[name].default


def is_set(name: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    return bool((raw(name, environ) or "").strip())


def seconds(name: str, low: float, high: float = 3600.0,
            environ: Optional[Mapping[str, str]] = None) -> float:
    """A number of seconds from `low` to `high`; ParameterError naming the variable otherwise."""
    text = get(name, environ)
    try:
        value = float(text)
    except ValueError:
        raise ParameterError("{} must be a number of seconds, got {}".format(
            name, excerpt(text, 40))) from None
    if not low <= value <= high:
        raise ParameterError("{} must be between {:g} and {:g}, got {}".format(
            name, low, high, excerpt(text, 40)))
    return value


def code_directories(name: str, environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """The directories the os.pathsep-separated `name` lists whose code this process may run
    (``site.addsitedir`` executes their ``*.pth`` files), resolved; ones that do not exist are
    left out. ParameterError naming the variable for a relative path or a directory whose code
    another unprivileged user could have written (:func:`connector.files.code_directory_reason`)."""
    found: List[str] = []
    for entry in get(name, environ).split(os.pathsep):
        if not entry or not os.path.isdir(entry):
            continue
        if not os.path.isabs(entry):
            raise ParameterError("{} names the relative path {}; give absolute paths (a relative "
                                 "one depends on the working directory)".format(name, excerpt(entry)))
        # Resolved once: the directory checked is the one used, whatever a link in it does later.
        real = os.path.realpath(entry)
        reason = code_directory_reason(real)
        if reason:
            raise ParameterError("{} names {}, whose code another user could have written: {}; make "
                                 "it writable only by root or this user, or leave it out of {}"
                                 .format(name, excerpt(entry), reason, name))
        found.append(real)
    return found


def overlay(names: Iterable[str], environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The parameters among `names` that the environment sets (they win over a file's)."""
    env = environment(environ)
    return {name: env[name] for name in names if name in env}


def export_default(name: str, value: str) -> None:
    """Set `name` for native libraries of this process and its children that read it (TVM's
    thread binding), unless the operator set it."""
    os.environ.setdefault(name, value)


def worker_environment() -> Dict[str, str]:
    """A copy of this process's environment for a child process to start from."""
    return dict(os.environ)
