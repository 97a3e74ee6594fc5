"""ONNX Runtime backend: one InferenceSession per worker, CPU by default, CUDA when asked."""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, List, Tuple

import numpy as np

from ... import settings
from ..contract import ModelIO, onnx_io
from ...errors import BackendError, DeviceUnavailableError
from ..directory import ModelDirectory
from .base import THREADS_ENV

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# ORT's log severities: 0 verbose .. 3 error, 4 fatal. Its error lines for a failed load repeat
# what the exception says (and it prints them to stderr, next to our log); keep only fatal ones.
ORT_QUIET = 4

# Session creation failing inside a graph optimiser, not in the model: ORT >= 1.25 fails with
# "AddInitializedOrtValue Attempt to replace the existing tensor" in constant folding on
# GluonCV's YOLOv3 export (and in MatMulAddFusion on graphs it folded itself); ORT 1.18.0's
# GatherSliceToSplitFusion names two nodes alike in GluonCV's SSD export ("two nodes with same
# node name (/GatherSliceToSplitFusion/)"). Failures that no optimiser can cause are not retried.
_ADD_INITIALIZER = re.compile(r"AddInitializedOrtValue|Attempt to replace the existing tensor")
_NAMED_OPTIMIZER = re.compile(r"\b([A-Z][A-Za-z]*(?:Fusion|Folding|Elimination|Fuse|Transformer))\b")
_NOT_AN_OPTIMIZER = re.compile(r"Protobuf parsing failed|No such file|Unsupported model IR version|"
                               r"opset|not a registered function|NOT_IMPLEMENTED|INVALID_PROTOBUF")


def retries(message: str) -> List[Tuple[str, Dict[str, Any]]]:
    """What to switch off, in order, until the model loads: the optimisers the error names (or
    constant folding, for the initializer clash), then all but the basic level, then all."""
    if _NOT_AN_OPTIMIZER.search(message):
        return []
    steps: List[Tuple[str, Dict[str, Any]]] = []
    clash = _ADD_INITIALIZER.search(message) is not None
    named = sorted(set(_NAMED_OPTIMIZER.findall(message)) | ({"ConstantFolding"} if clash else set()))
    if named:
        steps.append(("the {} optimizer{}".format(" and ".join(named), "s" if len(named) > 1 else ""),
                      {"disabled_optimizers": named}))
    if clash:
        steps.append(("the ConstantFolding and MatMulAddFusion optimizers",
                      {"disabled_optimizers": sorted(set(named) | {"MatMulAddFusion"})}))
    steps.append(("graph optimizations above the basic level", {"level": "ORT_ENABLE_BASIC"}))
    steps.append(("all graph optimizations", {"level": "ORT_DISABLE_ALL"}))
    return steps


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
    threads = settings.get(THREADS_ENV)
    if threads.isdigit() and int(threads) > 0:  # set by the worker pool for each worker's share
        options.intra_op_num_threads = int(threads)
    return options


def create_session(ort: Any, path: str, providers: List[str]) -> Any:
    """An InferenceSession for `path`; a load that fails in a graph optimiser is retried with it
    switched off (one log line says so). BackendError when the model cannot be loaded."""
    try:
        ort.set_default_logger_severity(ORT_QUIET)  # the environment's logger, before any session
        # No telemetry at run time: ORT's builds for Linux send none, its Windows builds send
        # events unless told not to; switched off before any session, wherever we run.
        ort.disable_telemetry_events()
    except AttributeError:  # pragma: no cover - very old ORT
        pass
    try:
        return ort.InferenceSession(path, sess_options=_options(ort), providers=providers)
    except Exception as e:  # ORT raises its own exception types from C++
        first = e
    steps = retries(str(first))
    for what, how in steps:
        try:
            session = ort.InferenceSession(
                path, sess_options=_options(ort, how.get("level", "")), providers=providers,
                **({"disabled_optimizers": how["disabled_optimizers"]}
                   if "disabled_optimizers" in how else {}))
        except Exception:  # the next step switches off more
            continue
        log.warning("ONNX Runtime %s failed to optimise %s (%s); loaded it with %s disabled",
                    ort.__version__, os.path.basename(path), _short(first), what)
        return session
    raise BackendError("ONNX Runtime cannot load {!r}{}: {}".format(
        path, ", not even with graph optimizations disabled" if steps else "", first)) from None


def _short(error: BaseException) -> str:
    """The innermost of ORT's nested messages, without its C++ source location."""
    text = " ".join(str(error).split()) or type(error).__name__
    parts = [p.strip() for p in re.split(r"\[ONNXRuntimeError\] : \d+ : \w+ :", text) if p.strip()]
    inner = parts[-1] if parts else text
    return re.sub(r"^\S+\.(cc|h|cpp):\d+ ", "", inner)[:300]


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, model: ModelDirectory, device: str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendError("ONNX Runtime is not installed ({}); install it with "
                               "pip install 'ml-object-detection-connector[onnx]'".format(e)) from None
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
