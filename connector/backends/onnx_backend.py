"""ONNX Runtime backend: one InferenceSession per worker, CPU by default, CUDA when asked."""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, List, Tuple

import numpy as np

from ..contract import ModelIO, onnx_io
from ..errors import BackendError, DeviceUnavailableError
from ..model_dir import ModelDirectory

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# ORT's log severities: 0 verbose .. 3 error, 4 fatal. Its error lines for a failed load repeat
# what the exception says (and it prints them to stderr, next to our log); keep only fatal ones.
ORT_QUIET = 4

# Session creation failing inside a graph optimiser, not in the model: ORT >= 1.25 fails with
# "AddInitializedOrtValue Attempt to replace the existing tensor" in constant folding on
# GluonCV's YOLOv3 export (1.16-1.24 load it), and in MatMulAddFusion on graphs it folded itself.
_OPTIMIZER_FAILURE = re.compile(r"AddInitializedOrtValue|Attempt to replace the existing tensor")
# What to switch off, in order, until the model loads: the named optimisers first (everything
# else stays optimised), then all but the basic level, then everything.
RETRIES: Tuple[Tuple[str, Dict[str, Any]], ...] = (
    ("the ConstantFolding optimizer", {"disabled_optimizers": ["ConstantFolding"]}),
    ("the ConstantFolding and MatMulAddFusion optimizers",
     {"disabled_optimizers": ["ConstantFolding", "MatMulAddFusion"]}),
    ("graph optimizations above the basic level", {"level": "ORT_ENABLE_BASIC"}),
    ("all graph optimizations", {"level": "ORT_DISABLE_ALL"}),
)


def _options(ort: Any, level: str = "") -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = ORT_QUIET
    if level:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    # ORT's thread pool spins for a while after each run, waiting for more work. A service
    # answers one request at a time and then has to deliver the answer: spinning threads would
    # take the CPU from exactly that (and burn an edge device's power while idle).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def create_session(ort: Any, path: str, providers: List[str]) -> Any:
    """An InferenceSession for `path`; a load that fails in a graph optimiser is retried with it
    switched off (one log line says so). BackendError when the model cannot be loaded."""
    try:
        ort.set_default_logger_severity(ORT_QUIET)  # the environment's logger, before any session
    except AttributeError:  # pragma: no cover - very old ORT
        pass
    try:
        return ort.InferenceSession(path, sess_options=_options(ort), providers=providers)
    except Exception as e:  # ORT raises its own exception types from C++
        first = e
    if not _OPTIMIZER_FAILURE.search(str(first)):
        raise BackendError("ONNX Runtime cannot load {!r}: {}".format(path, first)) from None
    for what, how in RETRIES:
        try:
            session = ort.InferenceSession(
                path, sess_options=_options(ort, how.get("level", "")), providers=providers,
                **({"disabled_optimizers": how["disabled_optimizers"]}
                   if "disabled_optimizers" in how else {}))
        except Exception as e:
            if _OPTIMIZER_FAILURE.search(str(e)):
                continue
            raise BackendError("ONNX Runtime cannot load {!r}: {}".format(path, e)) from None
        log.warning("ONNX Runtime %s failed to optimise %s (%s); loaded it with %s disabled",
                    ort.__version__, os.path.basename(path), _short(first), what)
        return session
    raise BackendError("ONNX Runtime cannot load {!r}, not even with graph optimizations "
                       "disabled: {}".format(path, first))


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[-200:]


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
        self._session = create_session(ort, path, [CUDA] if device == "gpu" else [CPU])
        used = self._session.get_providers()
        if device == "gpu" and CUDA not in used:
            # ORT quietly drops a provider whose libraries (CUDA, cuDNN) fail to load.
            raise DeviceUnavailableError(
                "GPUAcceleration=GPU but ONNX Runtime could not start CUDA (session providers: {}); "
                "check the CUDA and cuDNN libraries with `python -m connector doctor`"
                .format(", ".join(used)))
        self.device = "gpu" if CUDA in used else "cpu"
        self.io: ModelIO = onnx_io(self._session, os.path.basename(path))
        inputs = self.io.inputs
        # More than one input is refused when the contract is resolved (contract.resolve).
        self.input_name = inputs[0].name if inputs else ""
        self.output_names = [o.name for o in self.io.outputs]

    def run(self, tensor: np.ndarray) -> List[np.ndarray]:
        try:
            return self._session.run(None, {self.input_name: tensor})
        except Exception as e:
            raise BackendError("ONNX Runtime failed to run the model: {}".format(e)) from None

    def close(self) -> None:
        self._session = None
