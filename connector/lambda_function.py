"""The connector as a Greengrass Lambda: `connector.lambda_function.function_handler`.

Greengrass V1 (and V2's Lambda launcher) imports this module once in a pinned, long-lived Lambda
and then calls `function_handler(event, context)` per request, where `event` is the image bytes
(EncodingType binary) and `context.client_context.custom` carries the SDK's Content-Type.
At import the service is started from the connector parameters in the environment, when they are
there; tools and tests that only import the module stay cheap.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Dict, Mapping, Optional, Union

from . import settings
from .errors import ConnectorError, NotRunError, ParameterError
from .ipc.runtime import NoAnswer
from . import logs
from .feedback.feeder import FeedbackFeeder, feeder_for
from .logs import configure_logging
from .params import load_parameters
from .service.inference import InferenceService, SupervisedService

Service = Union[InferenceService, SupervisedService]

log = logging.getLogger("connector.lambda")

_service: Optional[Service] = None
_feeder: Optional[FeedbackFeeder] = None


def bootstrap(environ: Optional[Mapping[str, str]] = None, report: bool = True) -> Service:
    """Load the parameters and the model once; tell the core the outcome where it listens."""
    global _service, _feeder
    env = settings.environment(environ)
    try:
        params = load_parameters(environ=env)
    except ParameterError:
        configure_logging(settings.overlay(["LocalInferenceServiceName"], env).get(
            "LocalInferenceServiceName") or "connector")
        log.exception("start-up failed: bad connector parameters")
        if report:
            _report_initialized(env, False, "bad connector parameters")
        raise
    configure_logging(params.service_name)
    try:
        # Maybe in a Greengrass container, whose memory limit may be hidden (no /sys there).
        _service = SupervisedService.from_parameters(params, env, in_greengrass_container=True)
    except ConnectorError as e:
        log.error("start-up failed: %s", e)
        if report:
            _report_initialized(env, False, str(e))
        raise
    log.info("serving %s (resource %s) from %s", params.service_name, params.model_resource_id,
             params.model_path)
    if params.feedback_config_id:
        from .ipc.client import IPCClient
        _feeder = feeder_for(params, IPCClient.from_environment(env, timeout=30),
                             settings.get("AWS_REGION", env), env)
    if report:
        _report_initialized(env, True, "model {} loaded".format(params.model_resource_id))
    return _service


def use_service(service: Optional[Service]) -> None:
    """Serve requests with an already-started service (the standalone host does this)."""
    global _service
    _service = service


def use_feeder(feeder: Optional[FeedbackFeeder]) -> None:
    """Hand every answered request to this feeder (MLFeedbackConnectorConfigId is set)."""
    global _feeder
    _feeder = feeder


def function_handler(event: Any, context: Any) -> Dict[str, str]:
    if _service is None:
        raise RuntimeError("the inference service is not started: the connector parameters were "
                           "not found in the environment at import")
    custom = _custom_context(context)
    invocation = getattr(context, "invocation_id", None) or getattr(context, "aws_request_id", "-")
    with logs.invocation(invocation):
        try:
            text = _service.infer(event, custom.get("Content-Type"), invocation,
                                  getattr(context, "deadline", None), getattr(context, "cancelled", None))
        except NotRunError as e:  # whoever owns the caller's deadline answers it
            raise NoAnswer(str(e)) from None
        except ConnectorError as e:
            log.warning("invocation %s failed: %s", invocation, e)
            raise
    if _feeder is not None:  # only queued here; sent by the feeder's thread
        _feeder.offer(event, text, custom.get("Content-Type"))
    return {"Body": text, "ContentType": "application/json"}


def _custom_context(context: Any) -> Dict[str, Any]:
    client_context = getattr(context, "client_context", None)
    custom = getattr(client_context, "custom", None)
    return custom if isinstance(custom, dict) else {}


def _report_initialized(env: Mapping[str, str], success: bool, response: str) -> None:
    """PUT .../initialized where a core (or our host) offers it; absent Greengrass, nothing to do."""
    arn, token = settings.get("MY_FUNCTION_ARN", env), settings.get("AWS_CONTAINER_AUTHORIZATION_TOKEN", env)
    if not arn or not token:
        return
    try:
        from .ipc.client import IPCClient
        IPCClient.from_environment(env).initialized(arn, success, response)
    except Exception as e:  # the core may not implement it; serving matters more than reporting
        log.debug("could not report initialization to the core: %s", e)


def _imported_by_a_lambda_runtime() -> bool:
    # A Greengrass runtime imports this module with the parameters in the environment. Our own
    # commands (serve, attach) import it too but start the service themselves: loading the model
    # here as well would load it twice.
    return ("MLModelDestinationPath" in settings.overlay(["MLModelDestinationPath"])
            and "connector.cli" not in sys.modules and settings.get("CONNECTOR_NO_BOOTSTRAP") != "1")


if _imported_by_a_lambda_runtime():
    bootstrap()
