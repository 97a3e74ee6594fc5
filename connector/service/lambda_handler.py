"""The connector's Lambda handler, bound to one service: one invocation in, one answer out.

What a Lambda runtime calls per request (``handler(event, context)``, the event being the image
bytes and ``context.client_context.custom`` the SDK's Content-Type), and what ``serve`` and
``attach`` hand :func:`connector.ipc.runtime.run_lambda`. Greengrass's own entry point,
:func:`connector.lambda_function.function_handler`, delegates to one of these.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from .. import logs
from ..errors import ConnectorError, NotRunError
from ..ipc.runtime import NoAnswer

log = logging.getLogger("connector.lambda")


class ConnectorHandler:
    def __init__(self, service: Any, feeder: Optional[Any] = None) -> None:
        """:param service: an InferenceService or SupervisedService (``infer``).
        :param feeder: a FeedbackFeeder (``offer``) when MLFeedbackConnectorConfigId is set."""
        self.service = service
        self.feeder = feeder

    def __call__(self, event: Any, context: Any) -> Dict[str, str]:
        custom = custom_context(context)
        invocation = getattr(context, "invocation_id", None) or getattr(context, "aws_request_id", "-")
        with logs.invocation(invocation):
            try:
                text = self.service.infer(event, custom.get("Content-Type"), invocation,
                                          getattr(context, "deadline", None),
                                          getattr(context, "cancelled", None))
            except NotRunError as e:  # whoever owns the caller's deadline answers it
                raise NoAnswer(str(e)) from None
            except ConnectorError as e:
                log.warning("invocation %s failed: %s", invocation, e)
                raise
        if self.feeder is not None:  # only queued here; sent by the feeder's thread
            self.feeder.offer(event, text, custom.get("Content-Type"))
        return {"Body": text, "ContentType": "application/json"}


def custom_context(context: Any) -> Dict[str, Any]:
    """``context.client_context.custom`` when it is a dict, else {}."""
    client_context = getattr(context, "client_context", None)
    custom = getattr(client_context, "custom", None)
    return custom if isinstance(custom, dict) else {}
