"""`feedback` (attach_feedback) stops the feedback service it started, also when its Lambda loop
fails: the delivery thread is stopped and joined, not left running into the interpreter's exit."""
from __future__ import annotations

import json
import threading

import pytest

from connector.feedback import lambda_function as feedback_lambda
from connector.ipc import IPCHost, protocol
from connector.standalone import attach

FEEDBACK_ARN = protocol.feedback_function_arn("us-east-1")


def test_the_feedback_service_is_closed_when_its_loop_fails(tmp_path, monkeypatch):
    config = tmp_path / "feedback.json"
    config.write_text(json.dumps({
        "FeedbackConfigurationMap": {"l1": {"local-directory": str(tmp_path / "samples"),
                                            "content-type": "image/png"}},
        "FeedbackSpoolDirectory": str(tmp_path / "spool")}))
    started = []

    def start_service(*args, **kwargs):  # the real service, kept to look at afterwards
        service = real_start(*args, **kwargs)
        started.append(service)
        return service

    def failing_loop(*args, **kwargs):
        raise RuntimeError("the core went away")

    real_start = feedback_lambda.start_service
    monkeypatch.setattr(feedback_lambda, "start_service", start_service)
    monkeypatch.setattr(attach, "run_lambda", failing_loop)
    # The command's process-wide set-up (log handlers, signal handlers) is not what is tested.
    monkeypatch.setattr(attach, "configure_logging", lambda name: None)
    monkeypatch.setattr(attach, "stop_on_signals", threading.Event)
    host = IPCHost(port=0, write_client_file=False).start()
    try:
        token = host.register_function(FEEDBACK_ARN)
        env = {"AWS_CONTAINER_AUTHORIZATION_TOKEN": token, "GG_DAEMON_PORT": str(host.port),
               "AWS_REGION": "us-east-1", "MY_FUNCTION_ARN": FEEDBACK_ARN}
        with pytest.raises(RuntimeError, match="the core went away"):
            attach.attach_feedback(str(config), environ=env)
        assert len(started) == 1
        assert started[0].describe()["delivery"] == "stopped"
    finally:
        for service in started:
            service.close()
        host.shutdown(0)
