"""Model runtimes behind one interface (:class:`base.Backend`, shaped after ONNX Runtime's session).

* :mod:`.base`          - the interface every runtime implements, and the threads setting
* :mod:`.onnx_backend`  - ONNX Runtime: one InferenceSession per worker, CPU or CUDA
* :mod:`.dlr_backend`   - SageMaker Neo / TVM graph-runtime models with DLR's libdlr.so
* :mod:`.dlr_runtime`   - what must happen around `dlr` before it is imported (phone home off,
  the CUDA probe, libdlr's native stderr)

Each runtime is imported only when a model needs it, so an ONNX-only install never needs DLR and
the reverse.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only names for the annotations: importing this package (as `doctor` does for
    # dlr_runtime) must not need NumPy (base) or PyYAML (directory)
    from ..directory import ModelDirectory
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
