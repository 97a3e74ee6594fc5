"""The inference service: what the Lambda handler and the standalone host call per request.

It owns the model for the life of the process and turns (body, content type) into the prediction
document text. Worker processes and their supervision plug in behind this same `infer` call.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from . import imaging, postprocess
from .engine import Engine
from .params import Parameters

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

    def infer(self, body: bytes, content_type: Optional[str], invocation_id: str = "-") -> str:
        """The prediction document for one request; ConnectorError subclasses for bad requests."""
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError("the request body must be the image bytes, got {}".format(type(body).__name__))
        imaging.check_content_type(content_type)
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
