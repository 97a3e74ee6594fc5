"""The errors a caller can see, in one place, all under :class:`ConnectorError`.

Every message names what was wrong (the parameter, the input, the file) so that a log line alone
is enough to act on it. Values taken from outside are quoted through :func:`excerpt`, never whole.

Exceptions that never reach a caller stay with the module that raises and handles them: the work
board's refusals (turned into HTTP statuses by :mod:`connector.ipc.routes`), the HTTP layer's
``Refusal``, the feedback delivery's permanent and transient failures, the spool's ``SpoolFull``.

Errors raised in an inference worker cross the process boundary by name
(:mod:`connector.supervision.messages`); :data:`FROM_WORKER` is the explicit list of the names a
worker may send, so an error type defined anywhere else arrives as what it is, or as a plain
:class:`ConnectorError` saying which name was unknown.
"""
from typing import Any, Dict, Optional, Type

EXCERPT_CHARS = 80


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """repr(value), cut to about `limit` characters with a note of the full length."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return "{}...({} characters)".format(text[:limit], len(text))


def shorten(text: Any, limit: int = 500) -> str:
    """`text` (not quoted), or its start and how much was left out: for error texts that reach
    health documents and log lines (a loader's message can be arbitrarily long)."""
    text = str(text)
    if len(text) <= limit:
        return text
    return "{}... ({} more characters)".format(text[:limit], len(text) - limit)


class ConnectorError(Exception):
    """Base class of every error this package raises on purpose."""


class ParameterError(ConnectorError):
    """A connector parameter (or setting) is missing or does not match its rule; start-up stops."""


class ConfigFileError(ConnectorError):
    """A configuration file is unreadable, too large, not UTF-8, or not plain YAML/JSON."""


class InvalidImageError(ConnectorError):
    """The request body is not a usable JPEG or PNG image (or is refused by a limit)."""


class ModelDirectoryError(ConnectorError):
    """The model directory is missing, empty, ambiguous or broken."""


class BackendError(ConnectorError):
    """The model runtime could not be loaded or failed while running the model."""


class DeviceUnavailableError(BackendError):
    """GPU acceleration was asked for but no usable GPU exists; never a silent CPU fallback."""


# -- the inference workers (connector.supervision) ------------------------------------------------

class WorkerError(ConnectorError):
    """The worker could not answer: it died, hung past the deadline, or could not start."""


class InferenceTimeoutError(WorkerError):
    """No answer within LocalInferenceServiceTimeoutSeconds; `reason` says what took the time."""

    MESSAGE = "no answer within LocalInferenceServiceTimeoutSeconds={seconds:g} s: {reason}"

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(self.MESSAGE.format(seconds=seconds, reason=reason))
        self.seconds = seconds
        self.reason = reason


class WorkerCrashedError(WorkerError):
    pass


class MemoryLimitError(WorkerError):
    pass


class NotRunError(WorkerError):
    """The work was never sent to a worker, and whoever owns the caller's deadline answers it:
    the caller left (`abandoned`), or its deadline passed or would pass before the work could
    finish. Inside `serve` that owner is the IPC host."""

    def __init__(self, reason: str, abandoned: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.abandoned = abandoned


# -- the IPC host and its clients (connector.ipc) --------------------------------------------------

class HostStartError(ConnectorError):
    """The host cannot start (address in use, unsafe client-file directory); one line says why."""


class ClientFileError(ConnectorError):
    """The client file cannot be written or read safely; the message says how to fix it."""


class IPCError(ConnectorError):
    """An IPC call failed: unreachable endpoint (status None) or a non-2xx answer (its errorType)."""

    def __init__(self, message: str, status: Optional[int] = None,
                 error_type: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


# -- the ML Feedback service (connector.feedback): its caller's publish raises
# GreengrassFeedbackException with the message and this type's name ---------------------------------

class FeedbackRefused(ConnectorError):
    """The request is not accepted."""


class InvalidFeedbackRequest(FeedbackRefused):
    pass


class QueueFull(FeedbackRefused):
    pass


class SpoolFullError(FeedbackRefused):
    pass


# -- tools ------------------------------------------------------------------------------------

class MigrationError(ConnectorError):
    """A migrate-v1 source or option cannot be used; one line naming the file (or option) and the
    rule."""


# The errors an inference worker reports by name, and what they become in the supervisor.
FROM_WORKER: Dict[str, Type[ConnectorError]] = {cls.__name__: cls for cls in (
    ConnectorError, InvalidImageError, ModelDirectoryError, BackendError, DeviceUnavailableError,
    ParameterError, MemoryLimitError)}


def from_worker(name: str, message: str) -> ConnectorError:
    """The error a worker reported as (`name`, `message`)."""
    cls: Optional[Type[ConnectorError]] = FROM_WORKER.get(name)
    if cls is None:
        return ConnectorError("{} (an error of unknown type {} in the inference worker)".format(
            message, excerpt(name, 40)))
    return cls(message)
