"""What a standalone host runs beside the connector: the GGRouter, the feedback service, the feeder.

* GGRouter (:mod:`connector.mqtt_router`) when a broker is configured (``--mqtt-url`` / ``GG_MQTT_URL``);
* the ML Feedback service (:mod:`connector.feedback`) at the MLFeedback address when its parameters
  are given (``serve --feedback-config FILE`` or ``FeedbackConfigurationMap`` in the environment);
* the connector's feeder when ``MLFeedbackConnectorConfigId`` is set.

Each is served through the host's board in this process, the way :mod:`connector.serve` serves the
connector; nothing here changes how the host itself works.

The feedback service publishes through GGRouter with its own function token (as a Greengrass
Lambda does), so the router knows it is the MLFeedback function and lets it publish its two
topics; callers publish only what the operator's allow-list grants (see connector.mqtt_router).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Dict, List, Mapping, Optional

from .feedback.config import FeedbackParameters
from .feedback.feeder import FeedbackFeeder, feeder_for
from .feedback.lambda_function import start_service
from .feedback.router import PREDICTION_TOPIC, STATUS_TOPIC
from .feedback.service import FeedbackService
from .ipc import protocol, run_lambda
from .mqtt_router import MqttSettings, RouterRunner

log = logging.getLogger("connector.host_services")

FEEDBACK_CONCURRENCY = 2


class HostServices(object):
    def __init__(self, host: Any, environ: Mapping[str, str], mqtt: Optional[MqttSettings] = None,
                 feedback: Optional[FeedbackParameters] = None, params: Any = None) -> None:
        """:param feedback: the feedback service's parameters (None: no feedback service).
        :param params: the connector's parameters (its feeder, when it has a feedback config id)."""
        self.router: Optional[RouterRunner] = None
        self.feedback: Optional[FeedbackService] = None
        self.feeder: Optional[FeedbackFeeder] = None
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        feedback_arn = protocol.feedback_function_arn(host.region)
        try:
            if mqtt is not None:
                self.router = RouterRunner(host, mqtt, grants={
                    feedback_arn: (PREDICTION_TOPIC, STATUS_TOPIC)})
            if feedback is not None:
                host.register_function(feedback_arn)
                # Its own token, not the callers': GGRouter grants topics by who publishes.
                self.feedback = start_service(host.client(timeout=10, function_arn=feedback_arn),
                                              host.region, environ, params=feedback)
                thread = threading.Thread(
                    target=run_lambda, name="ml-feedback",
                    args=(feedback_arn, self.feedback.handler, host.function_client(feedback_arn)),
                    kwargs={"stop_event": self._stop, "concurrency": FEEDBACK_CONCURRENCY}, daemon=True)
                thread.start()
                self._threads.append(thread)
            if params is not None:
                self.feeder = feeder_for(params, host.client(timeout=30), host.region, environ)
                if self.feeder and self.feedback and params.feedback_config_id not in self.feedback.params.configs:
                    log.warning("MLFeedbackConnectorConfigId=%s is not a config of this host's "
                                "FeedbackConfigurationMap (%s): every sample will be refused",
                                params.feedback_config_id, ", ".join(sorted(self.feedback.params.configs)))
        except BaseException:
            self.close()
            raise

    def describe(self) -> Dict[str, Any]:
        info: Dict[str, Any] = {}
        if self.router is not None:
            info["mqtt"] = self.router.describe()
        if self.feedback is not None:
            info["feedback"] = self.feedback.describe()
        if self.feeder is not None:
            info["feeder"] = dict(self.feeder.counters)
        return info

    def close(self) -> None:
        """After the host stopped taking work: stop feeding, delivering, then flush MQTT."""
        if self.feeder is not None:
            self.feeder.close()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.feedback is not None:
            self.feedback.close()
        if self.router is not None:
            self.router.close()
