"""ONNX Runtime backend: one InferenceSession per worker, CPU by default, CUDA when asked."""
from __future__ import annotations

import logging
from typing import List

import numpy as np

from ..errors import BackendError, DeviceUnavailableError
from ..model_dir import ModelDirectory

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, model: ModelDirectory, device: str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendError("ONNX Runtime is not installed ({}); install it with "
                               "pip install 'connector[onnx]'".format(e)) from None
        path = model.files["onnx"]
        if device == "gpu" and CUDA not in ort.get_available_providers():
            raise DeviceUnavailableError(
                "GPUAcceleration=GPU but this ONNX Runtime build has no CUDA provider (available: "
                "{}); install onnxruntime-gpu with CUDA, or set GPUAcceleration=CPU"
                .format(", ".join(ort.get_available_providers())))
        providers = [CUDA] if device == "gpu" else [CPU]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings from ORT's graph optimiser are noise in a daemon
        # ORT's thread pool spins for a while after each run, waiting for more work. A service
        # answers one request at a time and then has to deliver the answer: spinning threads would
        # take the CPU from exactly that (and burn an edge device's power while idle).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(path, sess_options=options, providers=providers)
        except Exception as e:  # ORT raises its own exception types from C++
            raise BackendError("ONNX Runtime cannot load {!r}: {}".format(path, e)) from None
        used = self._session.get_providers()
        if device == "gpu" and CUDA not in used:
            # ORT quietly drops a provider whose libraries (CUDA, cuDNN) fail to load.
            raise DeviceUnavailableError(
                "GPUAcceleration=GPU but ONNX Runtime could not start CUDA (session providers: {}); "
                "check the CUDA and cuDNN libraries with `python -m connector doctor`"
                .format(", ".join(used)))
        self.device = "gpu" if CUDA in used else "cpu"
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise BackendError("{!r} has {} inputs; a detector takes one image input".format(
                path, len(inputs)))
        wanted = model.metadata.input_name
        self.input_name = inputs[0].name
        if self.input_name != wanted:
            log.debug("model input is named %r, metadata says %r; using the model's",
                      self.input_name, wanted)
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, tensor: np.ndarray) -> List[np.ndarray]:
        try:
            return self._session.run(None, {self.input_name: tensor})
        except Exception as e:
            raise BackendError("ONNX Runtime failed to run the model: {}".format(e)) from None

    def close(self) -> None:
        self._session = None
