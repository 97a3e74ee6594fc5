"""The feedback service's collector: accept a request (the Lambda handler), then deliver it from the spool.

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
import errno
import logging
import os
import random
import re
import threading
import time
import traceback
import uuid
from typing import Any, Callable, Dict, Optional

from ..errors import FeedbackRefused, InvalidFeedbackRequest, QueueFull, SpoolFullError
from ..counters import Counters
from . import gate as gates
from .config import FeedbackConfig, FeedbackParameters, check_metadata, check_prediction
from .destinations import (LOCAL_FULL, LocalDirectory, PermanentError, S3Destination,
                           TransientError, checked_sample, is_disk_full, object_key,
                           s3_client_factory, utc_now_text)
from .ratelog import RateLimitedLog
from .publisher import PREDICTION_TOPIC, STATUS_TOPIC, RouterPublisher
from ..files import UnsafeFile
from .records import ID_PATTERN
from .spool import QUARANTINE, Entry, Spool, SpoolFull

log = logging.getLogger("connector.feedback")


def publish_ts() -> str:
    """The original's ``publish-ts`` format, ``2019-07-11 00:12:48.816752`` (UTC here)."""
    return str(datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None))


# What a body of these content types starts with: (signature, format name, the bytes written out).
IMAGE_SIGNATURES = {
    "image/jpeg": (b"\xff\xd8\xff", "JPEG", "FF D8 FF"),
    "image/jpg": (b"\xff\xd8\xff", "JPEG", "FF D8 FF"),
    "image/png": (b"\x89PNG\r\n\x1a\n", "PNG", "89 50 4E 47 0D 0A 1A 0A"),
}


def check_image(config: FeedbackConfig, image: bytes) -> None:
    """InvalidFeedbackRequest when the body is not the image type the config declares (other
    content types are stored as declared)."""
    signature = IMAGE_SIGNATURES.get(config.content_type.split(";", 1)[0].strip().lower())
    if signature is not None and not image.startswith(signature[0]):
        raise InvalidFeedbackRequest(
            "ModelInput is not a {} image (it does not start with {}), but config {}'s content-type is "
            "{}".format(signature[1], signature[2], config.config_id, config.content_type))


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
        self.local = LocalDirectory(params.files_gid, clock=clock)
        for config in params.configs.values():  # checked at start, as the spool directory is
            if config.local_directory:
                self.local.check_root(config)
        self.counters = Counters(("accepted", "refused", "dropped", "delivered", "failed", "retries",
                                  "full", "disk_errors", "delivery_restarts"))
        self._accept_lock = threading.Lock()  # RequestLimit check and spool add are one step
        self._ratelog = RateLimitedLog(log)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _count(self, name: str) -> int:
        return self.counters.add(name)

    def describe(self) -> Dict[str, Any]:
        info: Dict[str, Any] = self.counters.snapshot()
        info.update(spooled=len(self.spool), spool_bytes=self.spool.bytes_used,
                    mqtt_skipped=self.publisher.skipped, quarantined=self.spool.quarantined_count,
                    delivery="running" if self._thread is not None and self._thread.is_alive()
                    else "stopped")
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
        if not isinstance(custom, dict):
            raise InvalidFeedbackRequest("the client context must be an object with ConfigId, "
                                         "ModelPrediction and Metadata")
        if not isinstance(request_id, str) or re.fullmatch(ID_PATTERN, request_id) is None:
            request_id = str(uuid.uuid4())  # it names the spool entry: only ours
        config_id = custom.get("ConfigId")
        config = self.params.configs.get(config_id) if isinstance(config_id, str) else None
        if config is None:
            raise InvalidFeedbackRequest("ConfigId {!r} is not in FeedbackConfigurationMap (known: {})"
                                         .format(config_id, ", ".join(sorted(self.params.configs))))
        prediction = custom.get("ModelPrediction")
        try:
            check_prediction(prediction)
            metadata = check_metadata(custom.get("Metadata"))
        except ValueError as exc:
            raise InvalidFeedbackRequest(str(exc)) from None
        if not isinstance(model_input, (bytes, bytearray, memoryview)) or not len(model_input):
            raise InvalidFeedbackRequest("ModelInput is empty")
        try:
            gates.check_readable(config, prediction)
        except ValueError as exc:
            raise InvalidFeedbackRequest("config {}: {}".format(config_id, exc)) from None
        image = bytes(model_input)
        check_image(config, image)
        with self._accept_lock:
            limit = self.params.request_limit
            if limit and len(self.spool) >= limit:
                message = "Request limit has been reached (max request: {} ). Dropping request.".format(limit)
                self._status_now(request_id, {"status": "fail", "error_message": message,
                                              "error": "Queue.Full"})
                raise QueueFull(message)
            verdict = self.gates[config_id].decide(prediction, len(image))
            kept = verdict == gates.KEPT
            sample = str(uuid.uuid4()) if kept else None
            record = {"id": request_id, "config-id": config_id, "accepted": time.time(),
                      "kept": kept, "verdict": verdict, "prediction": prediction, "metadata": metadata,
                      "sample": sample, "image-bytes": len(image) if kept else None,
                      "key": object_key(config.prefix, config.file_ext, sample) if kept else None}
            try:
                _, evicted = self.spool.add(record, image if kept else None)
            except SpoolFull as exc:
                self._status_now(request_id, {"status": "fail", "error_message": str(exc),
                                              "error": "SpoolFull"})
                raise SpoolFullError(str(exc)) from None
            except OSError as exc:  # e.g. a full disk: counted, and the caller learns it now
                failure = self._disk_failure(exc, "cannot write the sample to the spool {}".format(
                    self.spool.directory))
                self._status_now(request_id, failure)
                raise SpoolFullError(failure["error_message"]) from None
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

    def _disk_failure(self, exc: OSError, what: str) -> Dict[str, Any]:
        """The fail status of a write that failed; a full disk is counted and logged (rate-limited)."""
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        message = "{}: {} ({})".format(what, exc.strerror or exc, name)
        if is_disk_full(exc):
            self._count("disk_errors")
            self._ratelog.warning("disk", "feedback: the disk is full (%s): %s", name, message)
        return {"status": "fail", "error_message": message, "error": name}

    def _progress(self, entry: Entry, **progress: Any) -> None:
        """Record progress in the spool; a failed write (a full disk) is transient: the step is
        kept in memory and the request stays in the spool."""
        try:
            self.spool.update(entry, **progress)
        except OSError as exc:
            failure = self._disk_failure(exc, "cannot record progress in {}".format(entry.record_path))
            raise TransientError(failure["error"], failure["error_message"]) from None

    # -- delivering ---------------------------------------------------------------------------

    def start(self) -> "FeedbackService":
        self._thread = threading.Thread(target=self._supervise, name="feedback-delivery", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self.spool.wake()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _supervise(self) -> None:
        """Run the delivery loop; if it fails (a bug, something no check foresaw), log it, count it
        and start it again after a doubling pause: delivery never stops silently."""
        delay = max(self.params.retry_min_s, 0.05)
        while not self._stop.is_set():
            try:
                self._report_quarantined()
                self._work()
            except Exception as exc:
                self.spool.release()
                self._count("delivery_restarts")
                self._ratelog.warning("restart", "feedback delivery failed (%s: %s); restarted in %.3g s "
                                      "(%d restart(s) so far)\n%s", type(exc).__name__, exc, delay,
                                      self.counters["delivery_restarts"], traceback.format_exc().rstrip())
                self._stop.wait(delay)
                delay = min(delay * 2, max(self.params.retry_max_s, 0.05))

    def _report_quarantined(self) -> None:
        """Each request whose record was quarantined at start-up gets its one fail status."""
        while self.spool.quarantined:
            item = self.spool.quarantined[0]
            if item.request_id is not None:
                self._status_now(item.request_id, {
                    "status": "fail", "error": "Quarantined",
                    "error_message": "the spooled request {} was damaged ({}); it was moved to {}".format(
                        item.name, item.reason, os.path.join(self.spool.directory, QUARANTINE))})
            self.spool.quarantined.pop(0)

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
                if exc.disk_full:
                    self._count("disk_errors")
                    self._ratelog.warning("disk", "feedback: the disk is full (%s); request %s stays in "
                                          "the spool and is retried: %s", exc.name, entry.record["id"], exc)
                else:
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
            self._count(record["verdict"])  # why: sample_dropped_by_strategy, _by_condition, ...
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
                self._progress(entry, failure=failure)
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
            if failure["error"] == LOCAL_FULL:
                self._count("full")
            log.warning("feedback request %s failed: %s", request_id, failure["error_message"])

    def _deliver_sample(self, entry: Entry) -> None:
        record = entry.record
        config = self.params.configs.get(record["config-id"])
        if config is None:
            raise PermanentError("UnknownConfig", "config {!r} is no longer in FeedbackConfigurationMap"
                                 .format(record["config-id"]))
        try:
            image = entry.read_image(self.spool.max_bytes)
        except UnsafeFile as exc:
            raise PermanentError("ImageRefused", "the spooled image is refused: {}".format(exc))
        except OSError as exc:
            raise PermanentError("ImageMissing", "the spooled image is gone: {}".format(exc))
        # Built from the config (checked at start-up) and the sample's uuid: never a path from disk.
        key = object_key(config.prefix, config.file_ext, checked_sample(record["sample"]))
        if config.local_directory and record.get("local_response") is None:
            sidecar = {"id": record["id"], "config-id": config.config_id,
                       "content-type": config.content_type, "model-prediction": record["prediction"],
                       "metadata": record["metadata"], "time": utc_now_text()}
            self._progress(entry, local_response=self.local.put(config, record["sample"], image, sidecar))
        if config.bucket and record.get("s3_response") is None:
            self._progress(entry, s3_response=self.s3.put(config, key, image, record["metadata"]))
        if not record.get("prediction_sent"):
            if config.bucket:
                source = "s3://{}/{}".format(config.bucket, key)
            else:
                source = "file://" + os.path.join(str(config.local_directory), key)
            metadata = dict(record["metadata"], **{"publish-ts": publish_ts()})
            self.publisher.publish(PREDICTION_TOPIC, {
                "source-ref": source, "model-prediction": record["prediction"],
                "config-id": config.config_id, "metadata": metadata, "id": record["id"]})
            self._progress(entry, prediction_sent=True)

    def _status(self, request_id: str, response: Dict[str, Any]) -> None:
        self.publisher.publish(STATUS_TOPIC, {"response": response, "id": request_id})
