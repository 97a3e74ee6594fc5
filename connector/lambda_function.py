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
from .errors import ConnectorError, ParameterError
from .feedback.feeder import feeder_for
from .logs import configure_logging
from .params import load_parameters
from .service.lambda_handler import ConnectorHandler
from .service.inference import InferenceService, SupervisedService

Service = Union[InferenceService, SupervisedService]

log = logging.getLogger("connector.lambda")

# The one place this entry point keeps state: Greengrass calls a module-level function.
_handler = ConnectorHandler(None)


def bootstrap(environ: Optional[Mapping[str, str]] = None, report: bool = True) -> Service:
    """Load the parameters and the model once; tell the core the outcome where it listens."""
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
        service = SupervisedService.from_parameters(params, env, in_greengrass_container=True)
    except ConnectorError as e:
        log.error("start-up failed: %s", e)
        if report:
            _report_initialized(env, False, str(e))
        raise
    log.info("serving %s (resource %s) from %s", params.service_name, params.model_resource_id,
             params.model_path)
    _handler.service = service
    if params.feedback_config_id:
        from .ipc.client import IPCClient
        _handler.feeder = feeder_for(params, IPCClient.from_environment(env, timeout=30),
                                     settings.get("AWS_REGION", env), env)
    if report:
        _report_initialized(env, True, "model {} loaded".format(params.model_resource_id))
    return service


def use_service(service: Optional[Service]) -> None:
    """Serve requests with an already-started service (tools and tests; ``serve`` and
    ``attach`` give run_lambda a ConnectorHandler of their own instead)."""
    _handler.service = service


def function_handler(event: Any, context: Any) -> Dict[str, str]:
    """The Greengrass Lambda handler (``connector.lambda_function.function_handler``)."""
    if _handler.service is None:
        raise RuntimeError("the inference service is not started: the connector parameters were "
                           "not found in the environment at import")
    return _handler(event, context)


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
