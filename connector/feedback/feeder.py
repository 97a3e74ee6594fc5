"""The object-detection connector's side: every answered request goes to the feedback service.

:meth:`FeedbackFeeder.offer` only puts the request on a bounded in-memory queue; a background
thread calls the feedback service as the SDK's ``client('feedback').publish`` does (post_work to
the MLFeedback address, then get_work_result). So feeding never delays or fails an answer: a full
queue, a missing, slow or refusing feedback service is counted and logged at most once a minute.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
from typing import Any, Dict, Mapping, Optional

from .. import settings
from ..counters import Counters
from ..ipc import protocol
from ..ipc.client import IPCError
from .ratelog import RateLimitedLog

log = logging.getLogger("connector.feedback.feeder")

DEFAULT_QUEUE = 32
ENV_FUNCTION_ARN = "GG_ML_FEEDBACK_FUNCTION_ARN"  # the SDK's name for the same override


class FeedbackFeeder(object):
    def __init__(self, client: Any, function_arn: str, config_id: str,
                 metadata: Optional[Dict[str, str]] = None, queue_size: int = DEFAULT_QUEUE) -> None:
        """:param client: an IPC client (post_work, get_work_result) of the core or host."""
        self.client = client
        self.function_arn = function_arn
        self.config_id = config_id
        self.metadata = dict(metadata or {})
        self.counters = Counters(("fed", "feed_failed", "feed_dropped"))  # offer() runs on every handler thread
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=queue_size)
        self._ratelog = RateLimitedLog(log)
        self._thread = threading.Thread(target=self._run, name="feedback-feeder", daemon=True)
        self._thread.start()

    def offer(self, image: bytes, prediction_text: str, content_type: Optional[str]) -> None:
        """Hand one answered request over; returns at once."""
        try:
            self._queue.put_nowait((bytes(image), prediction_text, content_type))
        except queue.Full:
            dropped = self.counters.add("feed_dropped")
            self._ratelog.warning("full", "feedback: %d requests already wait for the ML Feedback "
                                  "service; sample dropped (%d so far)", self._queue.maxsize,
                                  dropped)

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.publish(*item)
                self.counters.add("fed")
            except Exception as exc:  # never let one sample end the feeding
                failed = self.counters.add("feed_failed")
                self._ratelog.warning("failed", "feedback: the ML Feedback service at %s did not take "
                                      "a sample (%d failed so far): %s", self.function_arn,
                                      failed, exc)

    def publish(self, image: bytes, prediction_text: str, content_type: Optional[str]) -> None:
        metadata = dict(self.metadata)
        if content_type:
            metadata["content-type"] = content_type
        context = protocol.encode_client_context({
            "ConfigId": self.config_id, "ModelPrediction": json.loads(prediction_text),
            "Metadata": metadata})
        invocation_id = self.client.post_work(self.function_arn, image, context)
        result = self.client.get_work_result(self.function_arn, invocation_id)
        if result.func_err:
            raise IPCError("{} error: {}".format(result.func_err, protocol.error_message_of(result.payload)))


def feeder_for(params: Any, client: Any, region: str,
               environ: Optional[Mapping[str, str]] = None) -> Optional[FeedbackFeeder]:
    """The feeder of a connector whose MLFeedbackConnectorConfigId is set, else None.

    The address is the SDK's: ``$GG_ML_FEEDBACK_FUNCTION_ARN`` when set (the feedback service
    deployed as a user Lambda inside Greengrass V1), else the MLFeedback address of `region`.
    """
    if not params.feedback_config_id:
        return None
    arn = settings.get(ENV_FUNCTION_ARN, environ) or protocol.feedback_function_arn(region)
    log.info("every answered request goes to the ML Feedback service %s under config %s", arn,
             params.feedback_config_id)
    return FeedbackFeeder(client, arn, params.feedback_config_id,
                          {"service-name": params.service_name,
                           "model-resource-id": params.model_resource_id})
