"""The inference engine: image bytes in, prediction document out.

One Engine owns one loaded model (loaded once, called many times). It is what a worker process
runs; the service layers (Lambda handler, IPC host, supervision) only move bytes to it.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional

import cv2
import numpy as np

from . import contract, formats, imaging, postprocess, preprocess
from .backends import open_backend
from .backends.base import Backend
from ..errors import BackendError, ConnectorError
from .directory import ModelDirectory, open_model_directory
from ..params import Parameters

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, model: ModelDirectory, backend: Backend,
                 max_pixels: int = imaging.DEFAULT_MAX_PIXELS) -> None:
        """`model`'s metadata is completed from what `backend` loaded (its input contract and
        output format); ModelDirectoryError when model.yaml contradicts the model."""
        io = backend.io
        fmt, meta = formats.configure(io.outputs, model.metadata, io.source)
        meta = contract.resolve(meta, io, fmt.default_size)
        self.model = model.with_metadata(meta)
        self.format = fmt
        self.backend = backend
        self.max_pixels = max_pixels
        # Memory decoding may take (None: max_pixels at the cheapest kind's bytes a pixel).
        self.max_decode_bytes: Optional[int] = None
        self.last_timings: Dict[str, float] = {}
        # Decode large JPEGs reduced by libjpeg (preprocess.reduction); off only to compare.
        self.reduced_decoding = True

    @classmethod
    def from_model_dir(cls, path: str, device: str = "cpu",
                       max_pixels: int = imaging.DEFAULT_MAX_PIXELS) -> "Engine":
        model = open_model_directory(path)
        started = time.monotonic()
        backend = open_backend(model, device)
        try:
            engine = cls(model, backend, max_pixels)
        except ConnectorError:
            backend.close()
            raise
        log.info("loaded %s model %s with %s on %s in %.2f s: %s output, input %s", model.kind,
                 model.path, backend.name, backend.device, time.monotonic() - started,
                 engine.format.name, contract.describe_input(engine.model.metadata))
        return engine

    @classmethod
    def from_parameters(cls, params: Parameters, max_pixels: int = imaging.DEFAULT_MAX_PIXELS) -> "Engine":
        return cls.from_model_dir(params.model_path, params.device, max_pixels)

    def detect(self, bgr: np.ndarray) -> list:
        """Predictions for decoded 8-bit BGR pixels."""
        meta = self.model.metadata
        tensor, frame = preprocess.to_tensor(bgr, meta)
        outputs = self.backend.run(tensor)
        return postprocess.to_predictions(self.format.decode(outputs, meta), frame)

    def infer(self, data: bytes, content_type: Optional[str] = None) -> Dict[str, Any]:
        """The prediction document for JPEG/PNG bytes; InvalidImageError for anything else."""
        if content_type is not None:
            imaging.check_content_type(content_type)
        meta = self.model.metadata
        reduce = (lambda w, h: preprocess.reduction(w, h, meta)) if self.reduced_decoding else None
        started = time.perf_counter()
        bgr = imaging.decode_bgr(data, self.max_pixels, self.max_decode_bytes, reduce)
        decoded = time.perf_counter()
        document = postprocess.prediction_document(self.detect(bgr))
        # For the operator's latency split (connector.service.metrics); one request at a time per engine.
        self.last_timings = {"decode": decoded - started, "inference": time.perf_counter() - decoded}
        return document

    def infer_text(self, data: bytes, content_type: Optional[str] = None) -> str:
        return postprocess.render(self.infer(data, content_type))

    def warm_up(self) -> None:
        """One inference on a blank image of the model's input size.

        The runtime's first-run allocations (workspaces, thread pools, codec state; ~20 MB for
        small models) then happen at load time, not in the first request: memory measured
        afterwards is what serving needs, and a model that cannot run at all fails to load
        instead of failing its first caller."""
        meta = self.model.metadata
        encoded, png = cv2.imencode(".png", np.zeros((meta.height, meta.width, 3), np.uint8))
        if not encoded:
            raise RuntimeError("OpenCV could not encode the warm-up image")
        try:
            self.infer(png.tobytes(), "image/png")
        except ConnectorError as e:
            raise BackendError("the model failed its first inference (a blank {}x{} image): {}"
                               .format(meta.width, meta.height, e)) from None

    def close(self) -> None:
        self.backend.close()
