"""Model runtimes behind one interface (see base.Backend).

Each runtime is imported only when a model needs it, so an ONNX-only install never needs DLR and
the reverse.
"""
from __future__ import annotations

from ..model_dir import ModelDirectory
from .base import Backend

DEVICES = ("cpu", "gpu")


def open_backend(model: ModelDirectory, device: str = "cpu") -> Backend:
    """Load `model` on `device` ("cpu" or "gpu"). GPU with no usable GPU raises DeviceUnavailableError."""
    if device not in DEVICES:
        raise ValueError("device must be one of {}, got {!r}".format(DEVICES, device))
    if model.kind == "dlr":
        from .dlr_backend import DLRBackend
        return DLRBackend(model, device)
    from .onnx_backend import OnnxBackend
    return OnnxBackend(model, device)
