"""Drop-in replacement of AWS's ``greengrass_machine_learning_sdk`` 1.1.0.

::

    import greengrass_machine_learning_sdk as ml
    client = ml.client('inference')
    resp = client.invoke_inference_service(AlgoType='object-detection',
                                           ServiceName='objectDetection',
                                           ContentType='image/jpeg', Body=content)
    predictions = resp['Body'].read().decode('utf-8')

Same clients, arguments, addresses, payloads and exceptions as the original
(``client('inference')``, ``client('feedback')``, :class:`GreengrassInferenceException`,
:class:`GreengrassFeedbackException`, :class:`GreengrassDependencyException`). It is
self-contained: standard library only, nothing from a Greengrass core, so it can be copied alone
into a Lambda deployment package.

Environment variables
---------------------
Inside a Greengrass Lambda (as the core sets them):

``AWS_CONTAINER_AUTHORIZATION_TOKEN``, ``MY_FUNCTION_ARN``
    Either one set means "inside Greengrass": the core's IPC is used.
``GG_DAEMON_PORT``
    The core's IPC port (default 8000); the host is ``localhost``.
``AWS_REGION``
    Region of the service addresses ``arn:aws:lambda:<region>:aws:function:GG-ML-INF-<AlgoType>-
    <ServiceName>`` and ``arn:aws:lambda:<region>:aws:function:MLFeedback``.
``GGC_MAX_INTERFACE_VERSION``
    Where set, must be ``1.x`` with ``x >= 2``; constructing a client raises ValueError otherwise.

Beyond the original:

``GG_ML_IPC_FILE``
    Without the Greengrass variables, the SDK reads the standalone inference host's client file
    (JSON with host, port, token, region) so that ``ml.client('inference')`` works with no setup.
    This names the file; default ``$XDG_RUNTIME_DIR/greengrass-ml/ipc.json``, else
    ``~/.config/greengrass-ml/ipc.json``. The file's region is used for the addresses.
``GG_ML_IPC_FAST``
    A standalone host of this package offers a faster way in than the Greengrass exchange (one
    frame each way on a private Unix socket beside its client file); the SDK uses it when the
    host's entry offers it, and the Greengrass exchange otherwise (inside Greengrass, an older
    host), with the same answers and exceptions. ``0`` holds it to the Greengrass exchange.
``GG_ML_INFERENCE_FUNCTION_ARNS``
    Maps a ServiceName to the function ARN that serves it, for an inference service deployed as a
    user Lambda (which has its own ARN, not the GG-ML-INF address of AWS's connector). Either a
    JSON object ``{"objectDetection": "arn:aws:lambda:us-east-1:123456789012:function:od:1"}`` or
    ``objectDetection=arn:...:function:od:1,other=arn:...``. Services not named use the GG-ML-INF
    address.
``GG_ML_FEEDBACK_FUNCTION_ARN``
    The same for ``client('feedback')``: the function ARN of the ML Feedback service.

Clients also take an optional ``timeout`` (seconds per IPC request), e.g.
``ml.client('inference', timeout=30)``; by default a call gives up 5 s after the service's own
timeout (the standalone host's client file gives it), or after 120 s where that is unknown
(inside Greengrass), so a hung endpoint never hangs the caller.
"""
from __future__ import annotations

from typing import Any

from .exception import GreengrassDependencyException
from .feedback import GreengrassFeedbackException
from .inference import GreengrassInferenceException, StreamingBody

# The AWS SDK API version implemented; also the version of the ml_sdk/ distribution (its setup.py
# reads this line).
__version__ = "1.1.0"
INTERFACE_VERSION = "1.2"

__all__ = ["client", "GreengrassDependencyException", "GreengrassFeedbackException",
           "GreengrassInferenceException", "StreamingBody"]

CLIENT_TYPES = ("inference", "feedback")


def client(client_type: str, *args: Any, **kwargs: Any) -> Any:
    """A client of the local ML service `client_type`: ``'inference'`` or ``'feedback'``.

    Raises ValueError for any other type, and when the core's interface version is too old.
    """
    if client_type == "inference":
        from .inference import Client
    elif client_type == "feedback":
        from .feedback import Client  # type: ignore[no-redef]
    else:
        raise ValueError("Client type {!r} is not recognized; use one of {}".format(
            client_type, ", ".join(repr(t) for t in CLIENT_TYPES)))
    return Client(*args, **kwargs)
