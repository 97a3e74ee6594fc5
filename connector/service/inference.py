"""The inference service: what the Lambda handler and the standalone host call per request.

Both implementations turn (body, content type) into the prediction document text, or raise a
ConnectorError subclass with a message for the caller:

* :class:`SupervisedService` (what the connector runs): the model lives in supervised worker
  processes (:mod:`connector.supervision`), so a crash or hang in a native runtime costs one
  request, not the service. It is the one owner of the request outcomes (``requests`` in health:
  ok, refused, timeout, abandoned, failed) and their latency (:mod:`.metrics`).
* :class:`InferenceService`: the model in this process (tools, tests, embedding in other programs).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional

from .. import settings
from ..errors import ConnectorError, InferenceTimeoutError, InvalidImageError, NotRunError
from ..model import imaging, postprocess
from ..model.engine import Engine
from ..params import Parameters
from ..supervision.memory import resident_kb
from ..supervision.pool import WorkerPool
from ..supervision.sizing import choose_workers
from .metrics import RequestMetrics

log = logging.getLogger("connector.service")
# One INFO line per request (id, bytes, outcome, milliseconds); CONNECTOR_REQUEST_LOG_LEVEL=WARNING
# turns it down (connector.logs).
request_log = logging.getLogger("connector.requests")

WATCH_ENV = "CONNECTOR_MODEL_WATCH_SECONDS"
# How long a worker may take to import its runtime and load the model. 120 s is generous on real
# hardware; under qemu emulation (scripts/arm/run-arm.sh) importing ONNX Runtime alone takes minutes.
LOAD_TIMEOUT_ENV = "CONNECTOR_MODEL_LOAD_TIMEOUT_SECONDS"
DEFAULT_WATCH_S = float(settings.BY_NAME[WATCH_ENV].default)
DEFAULT_LOAD_TIMEOUT_S = float(settings.BY_NAME[LOAD_TIMEOUT_ENV].default)


def check_request(body: Any, content_type: Optional[str]) -> None:
    """What can be refused without the model, before anything is sent to a worker."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError("the request body must be the image bytes, got {}".format(type(body).__name__))
    imaging.check_content_type(content_type)


def watch_interval(environ: Optional[Mapping[str, str]] = None) -> Optional[float]:
    """How often the model directory is checked for a new version; None (0 in the environment)
    turns watching off."""
    return settings.seconds(WATCH_ENV, 0, environ=environ) or None


def load_timeout(environ: Optional[Mapping[str, str]] = None) -> float:
    return settings.seconds(LOAD_TIMEOUT_ENV, 1, environ=environ)


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


def outcome_of(error: BaseException) -> str:
    """The request outcome (connector.service.metrics.OUTCOMES) an error stands for."""
    if isinstance(error, (InvalidImageError, TypeError)):
        return "refused"
    if isinstance(error, NotRunError):
        return "abandoned" if error.abandoned else "timeout"
    if isinstance(error, InferenceTimeoutError):
        return "timeout"
    return "failed"


class SupervisedService:
    def __init__(self, params: Parameters, watch_interval_s: Optional[float] = DEFAULT_WATCH_S,
                 load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S, workers: int = 1) -> None:
        self.params = params
        # Each worker watches its memory against the limit and sizes the decoder's pixel limit from
        # what the loaded model leaves free of it.
        self.pool = WorkerPool(workers, params.model_path, device=params.device,
                               max_pixels=imaging.DEFAULT_MAX_PIXELS, timeout_s=params.timeout_seconds,
                               service_name=params.service_name, memory_limit_kb=params.memory_limit_kb,
                               watch_interval_s=watch_interval_s, load_timeout_s=load_timeout_s)
        self.metrics = RequestMetrics()

    @classmethod
    def from_parameters(cls, params: Parameters, environ: Optional[Mapping[str, str]] = None,
                        in_greengrass_container: bool = False) -> "SupervisedService":
        """`in_greengrass_container`: the Lambda entry; see supervision.sizing.choose_workers."""
        workers = choose_workers(params.memory_limit_kb, environ,  # memory read before any loads
                                 hidden_cgroup_is_unknown=in_greengrass_container)
        service = cls(params, watch_interval(environ), load_timeout(environ), workers.count)
        # Logged once they are up: a start that fails stays one message.
        if workers.over_memory:
            log.warning("%d inference workers, more than fit in memory, as asked: %s", workers.count,
                        workers.why)
        else:
            log.info("%d inference worker%s: %s", workers.count, "s" if workers.count > 1 else "",
                     workers.why)
        return service

    def describe_requests(self) -> Dict[str, int]:
        """The health document's ``requests`` section: how the service finished each request."""
        return self.metrics.snapshot()[0]

    def describe_worker(self) -> Dict[str, Any]:
        """The health document's ``worker`` section: the pool's state and what its workers met."""
        name, device = self.pool.backend
        info = dict(state=self.pool.state, backend=name, device=device,
                    memory_limit_kb=self.params.memory_limit_kb, **self.pool.worker_info())
        info.update(self.pool.counters)
        if self.pool.last_error:
            info["last_error"] = self.pool.last_error
        return info

    def reload(self, reason: str = "requested") -> None:
        self.pool.reload(reason)

    def infer(self, body: bytes, content_type: Optional[str], invocation_id: str = "-",
              deadline: Optional[float] = None, cancelled: Optional[Callable[[], bool]] = None) -> str:
        """See WorkerSupervisor.infer for `deadline` and `cancelled`. Every call is counted and
        timed once (.metrics) and logged as one line on the `connector.requests` logger."""
        started = time.monotonic()
        outcome, timings = "failed", None
        try:
            check_request(body, content_type)
            answer = self.pool.infer(bytes(body), content_type, invocation_id, deadline, cancelled)
            outcome, timings = "ok", answer.timings
            return answer.text
        except (ConnectorError, TypeError) as e:
            outcome = outcome_of(e)
            raise
        finally:
            elapsed = time.monotonic() - started
            self.metrics.observe(outcome, elapsed, timings)
            size = len(body) if isinstance(body, (bytes, bytearray, memoryview)) else -1
            request_log.info("request %s: %d bytes, %s, %.1f ms", invocation_id, size, outcome, elapsed * 1000.0)

    def resident_bytes(self) -> Dict[str, Optional[int]]:
        """RSS of the supervisor (this process) and of the inference workers together."""
        supervisor = resident_kb(os.getpid())
        workers = [kb for kb in (resident_kb(p) for p in self.pool.worker_pids() if p) if kb is not None]
        return {"supervisor": supervisor * 1024 if supervisor is not None else None,
                "worker": sum(workers) * 1024 if workers else None}

    def close(self) -> None:
        self.pool.close()
