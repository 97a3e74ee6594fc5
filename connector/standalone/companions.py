"""What a standalone host runs beside the connector, each served through the host's board in
this process the way ``serve`` serves the connector:

* GGRouter (:mod:`.ggrouter`) when a broker is configured (``--mqtt-url`` / ``GG_MQTT_URL``);
* the ML Feedback service (:mod:`connector.feedback`) at the MLFeedback address when its
  parameters are given (``serve --feedback-config FILE`` or ``FeedbackConfigurationMap`` in the
  environment); it publishes through GGRouter with its own function token, since GGRouter grants
  topics by who publishes;
* the connector's feeder when ``MLFeedbackConnectorConfigId`` is set.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from ..feedback.config import FeedbackParameters
from ..feedback.feeder import FeedbackFeeder, feeder_for
from ..feedback.lambda_function import start_service
from ..feedback.publisher import PREDICTION_TOPIC, STATUS_TOPIC
from ..feedback.collector import FeedbackService
from ..ipc import protocol
from ..ipc.runtime import LambdaThread
from ..service.health import Health
from .ggrouter.forwarder import RouterRunner
from .ggrouter.settings import MqttSettings

log = logging.getLogger("connector.standalone.companions")

FEEDBACK_CONCURRENCY = 2


class Companions(object):
    def __init__(self, host: Any, environ: Mapping[str, str], mqtt: Optional[MqttSettings] = None,
                 feedback: Optional[FeedbackParameters] = None, params: Any = None) -> None:
        """:param feedback: the feedback service's parameters (None: no feedback service).
        :param params: the connector's parameters (its feeder, when it has a feedback config id)."""
        self.router: Optional[RouterRunner] = None
        self.feedback: Optional[FeedbackService] = None
        self.feeder: Optional[FeedbackFeeder] = None
        self._feedback_loop: Optional[LambdaThread] = None
        try:
            self._start(host, environ, mqtt, feedback, params)
        except BaseException:
            self.close()
            raise

    def _start(self, host: Any, environ: Mapping[str, str], mqtt: Optional[MqttSettings],
               feedback: Optional[FeedbackParameters], params: Any) -> None:
        feedback_arn = protocol.feedback_function_arn(host.region)
        if mqtt is not None:
            self.router = RouterRunner(host, mqtt, grants={feedback_arn: (PREDICTION_TOPIC, STATUS_TOPIC)})
        if feedback is not None:
            host.register_function(feedback_arn)
            # Its own token, not the callers': GGRouter grants topics by who publishes.
            self.feedback = start_service(host.client(timeout=10, function_arn=feedback_arn),
                                          host.region, environ, params=feedback)
            self._feedback_loop = LambdaThread(feedback_arn, self.feedback.handler,
                                               host.function_client(feedback_arn),
                                               FEEDBACK_CONCURRENCY, name="ml-feedback", daemon=True)
        if params is not None:
            self.feeder = feeder_for(params, host.client(timeout=30), host.region, environ)
            if self.feeder and self.feedback and params.feedback_config_id not in self.feedback.params.configs:
                log.warning("MLFeedbackConnectorConfigId=%s is not a config of this host's "
                            "FeedbackConfigurationMap (%s): every sample will be refused",
                            params.feedback_config_id, ", ".join(sorted(self.feedback.params.configs)))

    def describe_into(self, health: Health) -> None:
        """Their sections of the health document: ``mqtt``, ``feedback``, ``feeder``."""
        health.add("mqtt", self.router.describe if self.router is not None else None)
        health.add("feedback", self.feedback.describe if self.feedback is not None else None)
        feeder = self.feeder
        health.add("feeder", (lambda: feeder.counters.snapshot()) if feeder is not None else None)

    def close(self) -> None:
        """After the host stopped taking work: stop feeding, delivering, then flush MQTT."""
        if self.feeder is not None:
            self.feeder.close()
        if self._feedback_loop is not None:
            self._feedback_loop.stop(timeout_s=5)
        if self.feedback is not None:
            self.feedback.close()
        if self.router is not None:
            self.router.close()
