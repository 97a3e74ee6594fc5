"""The inference service: what the Lambda handler and the standalone host call per request.

Both implementations turn (body, content type) into the prediction document text, or raise a
ConnectorError subclass with a message for the caller:

* SupervisedService (what the connector runs): the model lives in a supervised worker process, so
  a crash or hang in a native runtime costs one request, not the service;
* InferenceService: the model in this process (tools, tests, embedding in other programs).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, Optional

from . import errors, imaging, postprocess
from .engine import Engine
from .params import Parameters
from .workers import WorkerPool

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

    def infer(self, body: bytes, content_type: Optional[str], invocation_id: str = "-") -> str:
        """The prediction document for one request; ConnectorError subclasses for bad requests."""
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


class SupervisedService:
    def __init__(self, params: Parameters) -> None:
        self.params = params
        # An image that could never fit in the memory limit is refused from its header, unread.
        self.pool = WorkerPool(params.model_path, params.device,
                               max_pixels=imaging.pixel_limit_for_memory(params.memory_limit_kb),
                               timeout_s=params.timeout_seconds, service_name=params.service_name)
        self.refused = 0  # requests answered with an error about the request itself

    @classmethod
    def from_parameters(cls, params: Parameters) -> "SupervisedService":
        return cls(params)

    def describe(self) -> Dict[str, Any]:
        name, device = self.pool.backend
        return dict(backend=name, device=device, worker=self.pool.state, worker_pid=self.pool.worker_pid(),
                    refused=self.refused, **self.pool.counters)

    def infer(self, body: bytes, content_type: Optional[str], invocation_id: str = "-") -> str:
        try:
            check_request(body, content_type)
        except (TypeError, errors.ConnectorError):
            self.refused += 1
            raise
        status, value = self.pool.infer(bytes(body), content_type, invocation_id)
        if status == "ok":
            return value
        kind, message = value
        if kind == "InvalidImageError":
            self.refused += 1
        error = getattr(errors, kind, None)
        raise (error if isinstance(error, type) and issubclass(error, errors.ConnectorError)
               else errors.ConnectorError)(message)

    def close(self) -> None:
        self.pool.close()
