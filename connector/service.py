"""The inference service: what the Lambda handler and the standalone host call per request.

Both implementations turn (body, content type) into the prediction document text, or raise a
ConnectorError subclass with a message for the caller:

* SupervisedService (what the connector runs): the model lives in a supervised worker process, so
  a crash or hang in a native runtime costs one request, not the service;
* InferenceService: the model in this process (tools, tests, embedding in other programs).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional

from . import errors, imaging, postprocess
from .engine import Engine
from .params import Parameters
from .worker_set import WorkerSet, worker_count

log = logging.getLogger("connector.service")


class InferenceService:
    def __init__(self, engine: Engine, params: Optional[Parameters] = None) -> None:
        self.engine = engine
        self.params = params
        # DLR's graph runtime keeps its inputs/outputs in the model object, so calls must not overlap.
        self._lock = threading.Lock()

    @classmethod
    def from_parameters(cls, params: Parameters) -> "InferenceService":
        return cls(Engine.from_parameters(params), params)

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.engine.backend.name, "device": self.engine.backend.device}

    def infer(self, body: bytes, content_type: Optional[str], invocation_id: str = "-",
              deadline: Optional[float] = None, cancelled: Optional[Callable[[], bool]] = None) -> str:
        """The prediction document for one request; ConnectorError subclasses for bad requests.
        (`deadline` and `cancelled` are accepted for the common signature; in-process inference
        cannot be cut short.)"""
        check_request(body, content_type)
        started = time.monotonic()
        bgr = imaging.decode_bgr(bytes(body), self.engine.max_pixels)  # outside the lock: decoding is thread-safe
        with self._lock:
            predictions = self.engine.detect(bgr)
        text = postprocess.render(postprocess.prediction_document(predictions))
        log.debug("invocation %s: %d bytes answered in %.1f ms", invocation_id, len(body),
                  (time.monotonic() - started) * 1000)
        return text

    def close(self) -> None:
        self.engine.close()


def check_request(body: Any, content_type: Optional[str]) -> None:
    """What can be refused without the model, before anything is sent to a worker."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError("the request body must be the image bytes, got {}".format(type(body).__name__))
    imaging.check_content_type(content_type)


WATCH_ENV = "CONNECTOR_MODEL_WATCH_SECONDS"
DEFAULT_WATCH_S = 2.0


def watch_interval(environ: Optional[Mapping[str, str]] = None) -> Optional[float]:
    """How often the model directory is checked for a new version; None (0 in the environment)
    turns watching off."""
    raw = (os.environ if environ is None else environ).get(WATCH_ENV)
    if raw is None or raw == "":
        return DEFAULT_WATCH_S
    try:
        seconds = float(raw)
    except ValueError:
        raise errors.ParameterError("{} must be a number of seconds (0 turns watching off), got {!r}"
                                    .format(WATCH_ENV, raw))
    if not 0 <= seconds <= 3600:
        raise errors.ParameterError("{} must be between 0 and 3600, got {!r}".format(WATCH_ENV, raw))
    return seconds or None


class SupervisedService:
    def __init__(self, params: Parameters, watch_interval_s: Optional[float] = DEFAULT_WATCH_S,
                 workers: int = 1) -> None:
        self.params = params
        # The worker watches its memory against the limit and sizes the decoder's pixel limit from
        # what the loaded model leaves free of it.
        self.pool = WorkerSet(workers, params.model_path, device=params.device,
                              max_pixels=imaging.DEFAULT_MAX_PIXELS, timeout_s=params.timeout_seconds,
                              service_name=params.service_name, memory_limit_kb=params.memory_limit_kb,
                              watch_interval_s=watch_interval_s)
        self.refused = 0  # requests answered with an error about the request itself
        self._refused_lock = threading.Lock()

    @classmethod
    def from_parameters(cls, params: Parameters,
                        environ: Optional[Mapping[str, str]] = None) -> "SupervisedService":
        return cls(params, watch_interval(environ), worker_count(environ))

    def describe(self) -> Dict[str, Any]:
        name, device = self.pool.backend
        info = dict(backend=name, device=device, worker=self.pool.state, refused=self.refused,
                    memory_limit_kb=self.params.memory_limit_kb, **self.pool.worker_info())
        info.update(self.pool.counters)
        if self.pool.last_error:
            info["last_error"] = self.pool.last_error
        return info

    def reload(self, reason: str = "requested") -> None:
        self.pool.reload(reason)

    def _refuse(self) -> None:
        with self._refused_lock:
            self.refused += 1

    def infer(self, body: bytes, content_type: Optional[str], invocation_id: str = "-",
              deadline: Optional[float] = None, cancelled: Optional[Callable[[], bool]] = None) -> str:
        """See WorkerPool.infer for `deadline` and `cancelled`."""
        try:
            check_request(body, content_type)
        except (TypeError, errors.ConnectorError):
            self._refuse()
            raise
        status, value = self.pool.infer(bytes(body), content_type, invocation_id, deadline, cancelled)
        if status == "ok":
            return value
        kind, message = value
        if kind == "InvalidImageError":
            self._refuse()
        error = getattr(errors, kind, None)
        raise (error if isinstance(error, type) and issubclass(error, errors.ConnectorError)
               else errors.ConnectorError)(message)

    def close(self) -> None:
        self.pool.close()
