"""Run a SageMaker Neo / TVM graph-runtime model with DLR (the `dlr` package and its libdlr.so).

Facts about dlr 1.6 this module works around (all checked against the real wheel):

* Importing `dlr` starts its "phone home" reporter unless ``dlr/counter/ccm_config.json`` already
  says ``{"enable_phone_home": false}``; connector.model.backends.dlr_runtime writes that file first.
* ``CreateDLRModel`` reports load failures only on the native stderr; ``DLRGetLastError`` then
  returns "" or the previous error. The load therefore runs with fd 2 captured.
* DLR's Python wrapper logs through its own console handler (DEBUG level, traceback on every
  failure, handlers reset at every model load); its messages are re-routed into this package's
  logging, at DEBUG, because every failure is raised here as BackendError anyway.
* With ``use_default_dlr=False`` DLR prefers a ``libdlr.so`` inside the model directory (Neo
  ships one built for the target) over the installed ``<sys.prefix>/dlr/libdlr.so``.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, List, Optional

import numpy as np

from ... import settings
from ..artefacts import architecture_problem, factory_export_problem
from ..contract import ModelIO, neo_io
from .dlr_runtime import (INSTALL_HINT, capture_native_stderr, clean_dlr_message, cuda_problem,
                          disable_phone_home)
from ...errors import BackendError, DeviceUnavailableError
from ..directory import ModelDirectory

log = logging.getLogger(__name__)
# Where DLR's own Python log records end up (see _route_dlr_logging).
dlr_log = log.getChild("dlr")

_setup_lock = threading.Lock()
_dlr_module: Any = None

# libdlr's words for "this build has no CUDA" (TVM: "Device API gpu is not enabled.").
_NO_GPU_IN_RUNTIME = re.compile(r"Device API (gpu|cuda) is not enabled|CUDA", re.IGNORECASE)


# Explanations for libdlr load errors whose wording points at the wrong thing.
_LOAD_HINTS = [
    (re.compile(r"curr_ptr_ \+ size <= buffer_size_|Invalid parameters file format"),
     "the parameters file {params} is truncated or corrupt"),
    (re.compile(r"size must exactly match|Found param for non-existent input"),
     "the parameters file {params} does not match the graph {graph}"),
    (re.compile(r"no such function in module"),
     "the graph {graph} names an operator function that {so} does not export: the files come "
     "from different compilations"),
    (re.compile(r"Must have TVM_GRAPH, TVM_PARAMS and TVM_LIB"),
     "libdlr found no usable graph, parameters or library among the files; one is probably "
     "empty or unreadable"),
    (re.compile(r"Expect '.' but get|invalid format|Invalid JSON|JSON", re.IGNORECASE),
     "the graph file {graph} is not a valid TVM graph JSON"),
    (re.compile(r"Failed to load dynamic shared library"),
     "{so} is not a loadable shared library for this platform"),
    (re.compile(r"^DLR library \(\S+\) could not be loaded"),
     "{library} is not a loadable libdlr.so for this platform"),
]


class _DemoteToDebug(logging.Filter):
    """DLR logs every failure with a traceback at ERROR; the backend raises a BackendError with
    the cleaned message instead, so DLR's own records are kept for debugging only."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        # The logger level was checked against the original level; check DEBUG again so that a
        # demoted record is not emitted by handlers of a logger configured above DEBUG.
        return dlr_log.isEnabledFor(logging.DEBUG)


def _route_dlr_logging(dlr: Any) -> None:
    dlr_log.addFilter(_DemoteToDebug())

    # DLR calls neologger.create_logger() at every model load; it clears and re-adds a console
    # handler each time, so fixing the handlers once is not enough: hand it our logger instead.
    def create_logger(*_args: Any, **_kwargs: Any) -> logging.Logger:
        return dlr_log

    for module_name in ("api", "dlr_model"):
        module = getattr(dlr, module_name, None)
        if module is not None and hasattr(module, "create_logger"):
            module.create_logger = create_logger


def import_dlr() -> Any:
    """Import `dlr` safely: phone-home off first, thread binding off, logging re-routed. Raises
    BackendError."""
    global _dlr_module
    with _setup_lock:
        if _dlr_module is not None:
            return _dlr_module
        disable_phone_home()
        # TVM's thread pool pins the thread that runs a model (and the threads and processes it
        # starts later inherit that) to fixed cores from core 0 unless this is 0: every worker, a
        # reload beside the old worker, and every other thread of the process would share one core.
        settings.export_default("TVM_BIND_THREADS", "0")
        try:
            import dlr
            import dlr.dlr_model  # noqa: F401  (imported lazily by DLRModel; needed to patch it)
            import dlr.libpath  # noqa: F401
        except Exception as e:  # e.g. dlr 1.6 needs `requests` even with phone-home off
            raise BackendError("the DLR runtime (Python package 'dlr') cannot be imported: {}: {}; "
                               "{}".format(type(e).__name__, e, INSTALL_HINT)) from e
        _route_dlr_logging(dlr)
        _dlr_module = dlr
        return dlr


class DLRBackend:
    """A Neo/DLR model loaded on `device` ("cpu" or "gpu"); see base.Backend."""

    name = "dlr"

    def __init__(self, model: ModelDirectory, device: str = "cpu") -> None:
        if model.kind != "dlr":
            raise BackendError("{!r} holds a {} model, not a Neo/DLR model".format(
                model.path, model.kind))
        if device not in ("cpu", "gpu"):
            raise ValueError("device must be 'cpu' or 'gpu', got {!r}".format(device))
        self.model = model
        self.device = device
        self._lock = threading.Lock()
        self._model: Any = None
        if device == "gpu":
            # Checked before DLR runs: a CPU-only machine must say "no GPU", not a TVM error.
            problem = cuda_problem()
            if problem is not None:
                raise DeviceUnavailableError(
                    "GPU acceleration was asked for (GPUAcceleration=GPU) but no usable GPU "
                    "exists: {}. The model in {!r} is not loaded; there is no CPU fallback - set "
                    "GPUAcceleration=CPU to run on the CPU.".format(problem, model.path))
        self._check_artefacts()
        dlr = import_dlr()
        self.library = self._find_library(dlr)
        self._load(dlr)
        # Read after the load: for a broken graph file DLR's own error is the clearer one.
        self.io: ModelIO = neo_io(model.files)

    def _check_artefacts(self) -> None:
        """Wrong-CPU libraries and factory exports, said plainly before libdlr says it obscurely."""
        for role in ("libdlr", "so"):
            path = self.model.files.get(role)
            problem = path and architecture_problem(path)
            if problem:
                raise BackendError("cannot load the DLR model in {!r}: {}".format(
                    self.model.path, problem))
        problem = factory_export_problem(self.model.files["so"])
        if problem:
            raise BackendError("cannot load the DLR model in {!r}: {}".format(
                self.model.path, problem))

    def _find_library(self, dlr: Any) -> str:
        """The libdlr.so DLR will load for this model (model directory first)."""
        try:
            return str(dlr.libpath.find_lib_path(self.model.path, use_default_dlr=False))
        except Exception as e:  # DLRLibraryNotFound
            raise BackendError(
                "no DLR runtime library (libdlr.so) for the model in {!r}: neither the model "
                "directory nor the dlr installation has one ({}); {}".format(
                    self.model.path, clean_dlr_message(str(e)) or e, INSTALL_HINT)) from e

    def _load(self, dlr: Any) -> None:
        error: Optional[BaseException] = None
        with capture_native_stderr() as native:
            try:
                self._model = dlr.DLRModel(self.model.path, dev_type=self.device, dev_id=0,
                                           use_default_dlr=False)
                inputs = list(self._model.get_input_names())
                # Output names exist only with a .meta file; DLR prints (not raises) when
                # they are missing, hence inside the capture.
                self.output_names: List[str] = (list(self._model.get_output_names())
                                                if self._model.has_metadata() else [])
            except Exception as e:
                error = e
        if error is not None:
            self._model = None
            self._raise_load_error(error, native.messages)
        for message in native.messages:
            log.debug("libdlr said while loading %s: %s", self.model.path, message)
        self.input_name = self._choose_input(inputs)
        log.info("loaded DLR model %s on %s with %s (input %r, outputs %s)", self.model.path,
                 self.device, self.library, self.input_name,
                 ", ".join(self.output_names) or "unnamed")

    def _raise_load_error(self, error: BaseException, native_messages: List[str]) -> None:
        # Native stderr first: DLRGetLastError (hence str(error)) is often empty or stale.
        message = ("; ".join(native_messages) or clean_dlr_message(str(error))
                   or type(error).__name__)
        if "Error message(s):" in message:
            # dlr's _load_lib lists Windows/OpenMP guesses before the actual dlopen error.
            message = "DLR library ({}) could not be loaded: {}".format(
                os.path.basename(self.library), message.split("Error message(s):", 1)[1].strip())
        if self.device == "gpu" and _NO_GPU_IN_RUNTIME.search(message):
            raise DeviceUnavailableError(
                "GPU acceleration was asked for (GPUAcceleration=GPU) but the DLR runtime {} "
                "cannot use the GPU ({}). The model in {!r} is not loaded; there is no CPU "
                "fallback - install a CUDA-enabled libdlr.so (or ship it in the model directory) "
                "or set GPUAcceleration=CPU.".format(self.library, message, self.model.path)
            ) from error
        hint = next((h for pattern, h in _LOAD_HINTS if pattern.search(message)), None)
        raise BackendError("cannot load the DLR model in {!r} (runtime {}, device {}): {}{}".format(
            self.model.path, self.library, self.device, message,
            " ({})".format(hint.format(library=self.library, **self.model.files)) if hint else "")
        ) from error

    def _choose_input(self, inputs: List[str]) -> str:
        wanted = self.model.metadata.input_name
        if len(inputs) > 1:
            # DLR counts as inputs the graph arguments that model.params did not fill; a
            # detector takes one image, so the others are parameters missing from the file
            # (running would use uninitialised weights).
            self.close()
            raise BackendError(
                "the DLR model in {!r} has {} inputs ({}) but a detector takes one image: "
                "{} has no values for the others (wrong or incomplete parameters file)".format(
                    self.model.path, len(inputs), ", ".join(inputs), self.model.files["params"]))
        if wanted in inputs:
            return wanted
        if len(inputs) == 1:
            log.debug("model metadata names the input %r but the DLR model in %s has the single "
                      "input %r; feeding that", wanted, self.model.path, inputs[0])
            return inputs[0]
        self.close()
        raise BackendError("the DLR model in {!r} has no input".format(self.model.path))

    def run(self, tensor: np.ndarray) -> List[np.ndarray]:
        """Run the model on one input tensor; return its outputs (shaped arrays) in model order."""
        # One DLR model handle is not safe to use from several threads at once.
        with self._lock:
            if self._model is None:
                raise BackendError("the DLR model in {!r} is closed".format(self.model.path))
            try:
                outputs = self._model.run({self.input_name: tensor})
            except Exception as e:
                raise BackendError("running the DLR model in {!r} failed: {}".format(
                    self.model.path, clean_dlr_message(str(e)) or type(e).__name__)) from e
        return [np.asarray(o) for o in outputs]

    def close(self) -> None:
        """Free the native model (DLR deletes it when its wrapper is collected)."""
        with self._lock:
            self._model = None

    def __repr__(self) -> str:
        return "DLRBackend({!r}, device={!r}, library={!r})".format(
            self.model.path, self.device, getattr(self, "library", None))
