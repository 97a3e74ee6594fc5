"""The feedback service as its own Greengrass Lambda: ``connector.feedback.lambda_function.function_handler``.

Deploy it pinned (long-lived), with the function ARN the SDK calls,
``arn:aws:lambda:<region>:aws:function:MLFeedback`` reached through a subscription-free direct
invocation, and its parameters (``FeedbackConfigurationMap``, ``RequestLimit``, the optional
``FeedbackSpool*`` / ``FeedbackRetry*``) as environment variables; see manifests/feedback/. At
import, inside a Lambda runtime, the service starts: the spool is opened (requests spooled by an
earlier run are delivered) and the delivery worker runs. MQTT goes through the core's GGRouter.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Mapping, Optional

from .. import settings
from ..ipc import protocol
from ..ipc.client import IPCClient
from ..logs import configure_logging
from .config import MAP_PARAMETER, FeedbackParameters, load_parameters
from .publisher import RouterPublisher
from .collector import FeedbackService

log = logging.getLogger("connector.feedback.lambda")

SERVICE_NAME = "MLFeedback"
_service: Optional[FeedbackService] = None


def start_service(client: Any, region: str, environ: Optional[Mapping[str, str]] = None,
                  config_file: Optional[str] = None,
                  params: Optional[FeedbackParameters] = None) -> Optional[FeedbackService]:
    """The started service, publishing MQTT through `client`'s GGRouter; None without parameters
    (`params`, else loaded from `config_file` and the environment).

    `client` must hold this function's own token (inside a core: the Lambda's
    AWS_CONTAINER_AUTHORIZATION_TOKEN; on our host: the MLFeedback function's): a router grants
    topics by who publishes, and the standalone host's refuses the callers' token by default."""
    env = settings.environment(environ)
    params = params or load_parameters(config_file, env)
    if params is None:
        return None
    source = settings.get(protocol.ENV_FUNCTION_ARN, env) or protocol.feedback_function_arn(region)
    service = FeedbackService(params, RouterPublisher(client, source)).start()
    log.info("ML Feedback service: configs %s, spool %s (%d waiting)", ", ".join(sorted(params.configs)),
             params.spool_directory, len(service.spool))
    return service


def bootstrap(environ: Optional[Mapping[str, str]] = None) -> FeedbackService:
    global _service
    env = settings.environment(environ)
    configure_logging(SERVICE_NAME)
    service = start_service(IPCClient.from_environment(env), settings.get(protocol.ENV_REGION, env), env)
    if service is None:
        raise RuntimeError("{} is not set: the ML Feedback service has nothing to do".format(MAP_PARAMETER))
    _service = service
    return service


def use_service(service: Optional[FeedbackService]) -> None:
    global _service
    _service = service


def function_handler(event: Any, context: Any) -> None:
    if _service is None:
        raise RuntimeError("the ML Feedback service is not started: {} was not found in the "
                           "environment at import".format(MAP_PARAMETER))
    _service.handler(event, context)


def _imported_by_a_lambda_runtime() -> bool:
    return (MAP_PARAMETER in settings.overlay([MAP_PARAMETER]) and "connector.cli" not in sys.modules
            and settings.get("CONNECTOR_NO_BOOTSTRAP") != "1")


if _imported_by_a_lambda_runtime():
    bootstrap()
