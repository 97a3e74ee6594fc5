"""The feedback service: accept a request (the Lambda handler), then deliver it from the spool.

Accepting (what ``client('feedback').publish`` waits for) validates the request, applies the
config's gate (conditions, sampling strategy, cooldown, budgets; see :mod:`.gate`) and writes the
request to the durable spool: the reply means "accepted and on disk". Refusals raise, so the caller
gets a ``GreengrassFeedbackException``: a bad request (:class:`InvalidFeedbackRequest`), the
``RequestLimit`` reached (:class:`QueueFull`, with the original's ``Queue.Full`` status message) or
a full spool under the ``reject-new`` policy (:class:`SpoolFullError`).

One worker delivers the spool oldest first: the image to the local directory and/or S3 (key
``<prefix>/<uuid>.<ext>``, the config's content type, the request's metadata), the prediction
message, then exactly one status message per request. A transient failure keeps the request in the
spool and retries it after a doubling delay capped at ``FeedbackRetryMaxSeconds``, without a retry
limit; each finished step is recorded, so a retry or a restart does not repeat it. A permanent
failure (no such bucket, access denied, ...) ends the request with one ``fail`` status.
"""
from __future__ import annotations

import datetime
import logging
import random
import threading
import time
import uuid
from typing import Any, Callable, Dict, Optional

from . import gate as gates
from .config import FeedbackParameters
from .destinations import (LocalDirectory, PermanentError, S3Destination, TransientError,
                           object_key, s3_client_factory, utc_now_text)
from .ratelog import RateLimitedLog
from .router import PREDICTION_TOPIC, STATUS_TOPIC, RouterPublisher
from .spool import Entry, Spool, SpoolFull

log = logging.getLogger("connector.feedback")


class FeedbackRefused(Exception):
    """The request is not accepted; the caller's publish raises GreengrassFeedbackException."""


class InvalidFeedbackRequest(FeedbackRefused):
    pass


class QueueFull(FeedbackRefused):
    pass


class SpoolFullError(FeedbackRefused):
    pass


def publish_ts() -> str:
    """The original's ``publish-ts`` format, ``2019-07-11 00:12:48.816752`` (UTC here)."""
    return str(datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None))


def _check_metadata(metadata: Any) -> Dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidFeedbackRequest("Metadata must be an object of strings, not {}".format(
            type(metadata).__name__))
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidFeedbackRequest("Metadata must map non-empty strings to strings; {!r}: {!r} "
                                         "does not".format(key, value))
        # S3 user metadata travels in HTTP headers: printable ASCII only.
        if not all(" " <= c <= "~" for c in key + value):
            raise InvalidFeedbackRequest("Metadata must be printable ASCII (S3 user metadata); {!r}: {!r} "
                                         "is not".format(key, value))
    return metadata


class FeedbackService(object):
    def __init__(self, params: FeedbackParameters, publisher: RouterPublisher,
                 s3: Optional[S3Destination] = None, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        self.params = params
        self.publisher = publisher
        self.spool = Spool(params.spool_directory, params.spool_max_bytes, params.spool_max_items,
                           params.spool_max_age_s, params.spool_full_policy)
        self.gates = {cid: gates.Gate(config, clock=clock, rng=rng)
                      for cid, config in params.configs.items()}
        self.s3 = s3 or S3Destination(s3_client_factory())
        self.local = LocalDirectory()
        self.counters = {"accepted": 0, "refused": 0, "dropped": 0, "delivered": 0, "failed": 0,
                         "retries": 0}
        self._counter_lock = threading.Lock()
        self._accept_lock = threading.Lock()  # RequestLimit check and spool add are one step
        self._ratelog = RateLimitedLog(log)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _count(self, name: str) -> None:
        with self._counter_lock:
            self.counters[name] += 1

    def describe(self) -> Dict[str, Any]:
        info: Dict[str, Any] = dict(self.counters)
        info.update(spooled=len(self.spool), spool_bytes=self.spool.bytes_used,
                    mqtt_skipped=self.publisher.skipped)
        return info

    # -- accepting ----------------------------------------------------------------------------

    def handler(self, event: Any, context: Any) -> None:
        """The Lambda handler at the MLFeedback address."""
        custom = getattr(getattr(context, "client_context", None), "custom", None) or {}
        request_id = getattr(context, "aws_request_id", None) or str(uuid.uuid4())
        self.accept(event, custom, request_id)

    def accept(self, model_input: Any, custom: Dict[str, Any], request_id: str) -> None:
        try:
            self._accept(model_input, custom, request_id)
        except FeedbackRefused as exc:
            self._count("refused")
            log.info("feedback request %s refused: %s", request_id, exc)
            raise

    def _accept(self, model_input: Any, custom: Dict[str, Any], request_id: str) -> None:
        config_id = custom.get("ConfigId")
        config = self.params.configs.get(config_id) if isinstance(config_id, str) else None
        if config is None:
            raise InvalidFeedbackRequest("ConfigId {!r} is not in FeedbackConfigurationMap (known: {})"
                                         .format(config_id, ", ".join(sorted(self.params.configs))))
        prediction = custom.get("ModelPrediction")
        if not isinstance(prediction, (list, dict)) or not prediction:
            raise InvalidFeedbackRequest("ModelPrediction must be a non-empty list or object")
        metadata = _check_metadata(custom.get("Metadata"))
        if not isinstance(model_input, (bytes, bytearray, memoryview)) or not len(model_input):
            raise InvalidFeedbackRequest("ModelInput is empty")
        try:
            gates.check_readable(config, prediction)
        except ValueError as exc:
            raise InvalidFeedbackRequest("config {}: {}".format(config_id, exc)) from None
        image = bytes(model_input)
        with self._accept_lock:
            limit = self.params.request_limit
            if limit and len(self.spool) >= limit:
                message = "Request limit has been reached (max request: {} ). Dropping request.".format(limit)
                self._status_now(request_id, {"status": "fail", "error_message": message,
                                              "error": "Queue.Full"})
                raise QueueFull(message)
            verdict = self.gates[config_id].decide(prediction, len(image))
            kept = verdict == gates.KEPT
            record = {"id": request_id, "config-id": config_id, "accepted": time.time(),
                      "kept": kept, "verdict": verdict, "prediction": prediction, "metadata": metadata,
                      "key": object_key(config.prefix, config.file_ext) if kept else None}
            try:
                _, evicted = self.spool.add(record, image if kept else None)
            except SpoolFull as exc:
                self._status_now(request_id, {"status": "fail", "error_message": str(exc),
                                              "error": "SpoolFull"})
                raise SpoolFullError(str(exc)) from None
        self._count("accepted")
        for old in evicted:
            self._count("failed")
            self._status_now(old.record["id"], {
                "status": "fail", "error": "SpoolFull",
                "error_message": "evicted from the full spool (policy drop-oldest) before delivery"})

    def _status_now(self, request_id: str, response: Dict[str, Any]) -> None:
        """A status outside the spool (refusals, evictions, expiry): best effort, logged."""
        try:
            self._status(request_id, response)
        except TransientError as exc:
            self._ratelog.warning("status", "status of feedback request %s not published: %s",
                                  request_id, exc)

    # -- delivering ---------------------------------------------------------------------------

    def start(self) -> "FeedbackService":
        self._thread = threading.Thread(target=self._work, name="feedback-delivery", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self.spool.wake()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _work(self) -> None:
        delay = self.params.retry_min_s
        while not self._stop.is_set():
            for old in self.spool.take_expired():
                self._count("failed")
                self._status_now(old.record["id"], {
                    "status": "fail", "error": "Expired",
                    "error_message": "not delivered within FeedbackSpoolMaxAgeSeconds={:g}".format(
                        self.params.spool_max_age_s)})
            entry = self.spool.oldest(timeout=0.5)
            if entry is None:
                continue
            try:
                self.deliver(entry)
            except TransientError as exc:
                self.spool.release()
                self._count("retries")
                self._ratelog.warning("transient", "feedback delivery of %s will be retried (every "
                                      "%.3g s at most %.3g s): %s: %s", entry.record["id"], delay,
                                      self.params.retry_max_s, exc.name, exc)
                self._stop.wait(delay)
                delay = min(max(delay * 2, 0.01), self.params.retry_max_s)
                continue
            except Exception:  # a bug must not stop delivery for good; the entry is retried
                self.spool.release()
                log.exception("unexpected failure delivering feedback request %s", entry.record["id"])
                self._stop.wait(self.params.retry_max_s)
                continue
            delay = self.params.retry_min_s

    def deliver(self, entry: Entry) -> None:
        """Deliver one spooled request; TransientError leaves it in the spool."""
        record = entry.record
        request_id = record["id"]
        if not record["kept"]:
            self._status(request_id, {"status": record["verdict"]})
            self.spool.remove(entry)
            self._count("dropped")
            return
        failure = record.get("failure")
        if failure is None:
            try:
                self._deliver_sample(entry)
            except PermanentError as exc:
                failure = {"status": "fail", "error_message": str(exc), "error": exc.name}
            except TransientError:
                raise
            except Exception as exc:  # unforeseen: retrying forever would block every later sample
                log.exception("feedback request %s cannot be delivered", request_id)
                failure = {"status": "fail", "error_message": "{}: {}".format(type(exc).__name__, exc),
                           "error": type(exc).__name__}
            if failure is not None:
                self.spool.update(entry, failure=failure)
        if failure is None:
            response: Dict[str, Any] = {"status": "success"}
            if record.get("s3_response") is not None:
                response["s3_response"] = record["s3_response"]
            if record.get("local_response") is not None:
                response["local_response"] = record["local_response"]
        else:
            response = failure
        self._status(request_id, response)
        self.spool.remove(entry)
        if failure is None:
            self._count("delivered")
        else:
            self._count("failed")
            log.warning("feedback request %s failed: %s", request_id, failure["error_message"])

    def _deliver_sample(self, entry: Entry) -> None:
        record = entry.record
        config = self.params.configs.get(record["config-id"])
        if config is None:
            raise PermanentError("UnknownConfig", "config {!r} is no longer in FeedbackConfigurationMap"
                                 .format(record["config-id"]))
        try:
            image = entry.read_image()
        except OSError as exc:
            raise PermanentError("ImageMissing", "the spooled image is gone: {}".format(exc))
        key = record["key"]
        if config.local_directory and record.get("local_response") is None:
            sidecar = {"id": record["id"], "config-id": config.config_id,
                       "content-type": config.content_type, "model-prediction": record["prediction"],
                       "metadata": record["metadata"], "time": utc_now_text()}
            self.spool.update(entry, local_response=self.local.put(config, key, image, sidecar))
        if config.bucket and record.get("s3_response") is None:
            self.spool.update(entry, s3_response=self.s3.put(config, key, image, record["metadata"]))
        if not record.get("prediction_sent"):
            if config.bucket:
                source = "s3://{}/{}".format(config.bucket, key)
            else:
                source = "file://" + record["local_response"]["path"]
            metadata = dict(record["metadata"], **{"publish-ts": publish_ts()})
            self.publisher.publish(PREDICTION_TOPIC, {
                "source-ref": source, "model-prediction": record["prediction"],
                "config-id": config.config_id, "metadata": metadata, "id": record["id"]})
            self.spool.update(entry, prediction_sent=True)

    def _status(self, request_id: str, response: Dict[str, Any]) -> None:
        self.publisher.publish(STATUS_TOPIC, {"response": response, "id": request_id})
