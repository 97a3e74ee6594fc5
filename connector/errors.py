"""The error types a caller can tell apart.

Every message names what was wrong (the parameter, the input, the file) so that a log line alone
is enough to act on it.
"""


class ConnectorError(Exception):
    """Base class of every error this package raises on purpose."""


class ParameterError(ConnectorError):
    """A connector parameter is missing or does not match its rule; start-up stops."""


class InvalidImageError(ConnectorError):
    """The request body is not a usable JPEG or PNG image (or is refused by a limit)."""


class ModelDirectoryError(ConnectorError):
    """The model directory is missing, empty, ambiguous or broken."""


class BackendError(ConnectorError):
    """The model runtime could not be loaded or failed while running the model."""


class DeviceUnavailableError(BackendError):
    """GPU acceleration was asked for but no usable GPU exists; never a silent CPU fallback."""
