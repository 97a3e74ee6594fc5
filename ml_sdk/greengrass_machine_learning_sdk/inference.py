"""``client('inference')``: call a local ML inference service (AWS SDK v1.1.0 compatible)."""
from __future__ import annotations

import base64
import json
import logging
import os
import re
from io import BytesIO
from typing import Any, Dict, Mapping, Optional, Tuple

from ._args import body_bytes, required_arguments
from ._service import (GreengrassRuntimeException, GreengrassServiceClient,
                       GreengrassServiceMessage, error_message_of, error_type_of)
from .exception import GreengrassDependencyException
from .util import ValidationUtil

log = logging.getLogger(__name__)

ALGO_TYPE = "AlgoType"
SERVICE_NAME = "ServiceName"
BODY = "Body"
CONTENT_TYPE_PARAM = "ContentType"
CONTENT_TYPE_HEADER = "Content-Type"
ACCEPT = "Accept"
_KNOWN_ARGUMENTS = (ALGO_TYPE, SERVICE_NAME, BODY, CONTENT_TYPE_PARAM, ACCEPT)

NAME_PATTERN_STRING = "^[a-zA-Z0-9][a-zA-Z0-9-]{1,62}$"
algo_type_pattern = re.compile(NAME_PATTERN_STRING)
service_name_pattern = re.compile(NAME_PATTERN_STRING)

ENV_FUNCTION_ARNS = "GG_ML_INFERENCE_FUNCTION_ARNS"
ADDRESS_FORMAT = "arn:aws:lambda:{region}:aws:function:GG-ML-INF-{algo_type}-{service_name}"


class GreengrassInferenceException(Exception):
    """The inference service itself refused or failed the request (a ``Handled`` function
    error); the message is the service's ``errorMessage``."""

    def __init__(self, message: str, error_type: Optional[str] = None, payload: bytes = b"") -> None:
        super().__init__(message)
        self.error_type = error_type
        self.payload = payload


class StreamingBody(object):
    """The response body, read like boto3's: ``read(amt=None)`` then ``close()``."""

    def __init__(self, payload: bytes) -> None:
        self._raw_stream = BytesIO(payload)
        self._amount_read = 0

    def read(self, amt: Optional[int] = None) -> bytes:
        """Read at most `amt` bytes; everything that is left when `amt` is omitted."""
        chunk = self._raw_stream.read(amt)
        self._amount_read += len(chunk)
        return chunk

    def close(self) -> None:
        self._raw_stream.close()


def parse_function_arns(text: str) -> Dict[str, str]:
    """The ServiceName -> function ARN map of ``$GG_ML_INFERENCE_FUNCTION_ARNS``.

    Either a JSON object ``{"objectDetection": "arn:aws:lambda:...:function:od:1"}`` or
    ``objectDetection=arn:...,other=arn:...``.
    """
    text = text.strip()
    if not text:
        return {}
    problem = None
    mapping: Dict[str, str] = {}
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError as exc:
            document, problem = None, "invalid JSON ({})".format(exc)
        if isinstance(document, dict) and all(
                isinstance(k, str) and isinstance(v, str) and k and v for k, v in document.items()):
            mapping = dict(document)
        elif problem is None:
            problem = "the JSON must be an object of non-empty strings"
    else:
        for part in text.split(","):
            if not part.strip():
                continue
            name, sep, arn = part.partition("=")
            if not sep or not name.strip() or not arn.strip():
                problem = "{!r} is not ServiceName=arn".format(part.strip())
                break
            mapping[name.strip()] = arn.strip()
    if problem:
        raise ValueError("{} is not valid: {}; expected a JSON object {{\"<ServiceName>\": \"<arn>\"}} "
                         "or <ServiceName>=<arn>,...".format(ENV_FUNCTION_ARNS, problem))
    return mapping


def service_address(algo_type: str, service_name: str, region: Optional[str],
                    environ: Optional[Mapping[str, str]] = None) -> str:
    """The function ARN that serves `service_name`: from ``$GG_ML_INFERENCE_FUNCTION_ARNS``
    when it names the service (a connector deployed as a user Lambda has its own ARN), else the
    GG-ML-INF address of the AWS connector."""
    env = os.environ if environ is None else environ
    mapped = parse_function_arns(env.get(ENV_FUNCTION_ARNS, "")).get(service_name)
    if mapped:
        return mapped
    if not region:
        raise GreengrassDependencyException(
            "AWS_REGION is not set, so the address of inference service {!r} cannot be built "
            "(set AWS_REGION, or map the service with {})".format(service_name, ENV_FUNCTION_ARNS))
    return ADDRESS_FORMAT.format(region=region, algo_type=algo_type, service_name=service_name)


def _name(kwargs: Dict[str, Any], key: str, pattern: "re.Pattern") -> str:
    value = kwargs[key]
    # fullmatch: "$" alone would let a trailing newline through into the service address.
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError("{} must match the regex {}, not {!r}".format(key, NAME_PATTERN_STRING, value))
    return value


class Client(object):
    """``greengrass_machine_learning_sdk.client('inference')``."""

    def __init__(self, timeout: Optional[float] = None) -> None:
        """:param timeout: socket timeout of each IPC request, beyond the original SDK (None: the
        service's own timeout plus 5 s where the standalone host's client file gives it, else
        120 s)."""
        ValidationUtil.validate_required_gg_interface()
        self._gg_service_client = GreengrassServiceClient(timeout=timeout)

    def invoke_inference_service(self, **kwargs: Any) -> Dict[str, Any]:
        """Run one inference on the local service.

        :Keyword Arguments:
            * *AlgoType* (``str``) -- [REQUIRED] e.g. ``object-detection``
            * *ServiceName* (``str``) -- [REQUIRED] the connector's LocalInferenceServiceName
            * *Body* (``bytes`` or readable file) -- [REQUIRED] the input, e.g. JPEG bytes
            * *ContentType* (``str``) -- the type of Body, e.g. ``image/jpeg``
            * *Accept* (``str``) -- the content type wanted for the response

        :returns: ``{"Body": StreamingBody, "ContentType": ...}``
        :raises ValueError: a missing or malformed argument
        :raises GreengrassInferenceException: the service refused or failed the request
        :raises GreengrassDependencyException: anything else failed (no service, IPC, timeout)
        """
        method = "Inference.Client.invoke_inference_service"
        unknown = sorted(set(kwargs) - set(_KNOWN_ARGUMENTS))
        if unknown:
            # The AWS SDK ignored unknown arguments; keep working, but say so (typos hide here).
            log.warning("%s ignores unknown argument(s) %s", method, ", ".join(unknown))
        required_arguments(kwargs, (ALGO_TYPE, SERVICE_NAME, BODY), method)
        algo_type = _name(kwargs, ALGO_TYPE, algo_type_pattern)
        service_name = _name(kwargs, SERVICE_NAME, service_name_pattern)
        body = body_bytes(kwargs[BODY], BODY)
        metadata: Dict[str, str] = {}
        for param, key in ((CONTENT_TYPE_PARAM, CONTENT_TYPE_HEADER), (ACCEPT, ACCEPT)):
            value = kwargs.get(param)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ValueError("{} must be a string, not {}".format(param, type(value).__name__))
            metadata[key] = value
        context = _client_context(metadata)

        try:
            output, address = self._gg_service_client.call_found(
                lambda endpoint: service_address(algo_type, service_name, endpoint.region),
                GreengrassServiceMessage(context, body), service_name)
        except GreengrassRuntimeException as exc:
            raise GreengrassDependencyException(str(exc))
        if output.error_response is not None:
            payload = output.error_response.payload
            raise GreengrassInferenceException(error_message_of(payload), error_type_of(payload), payload)
        return _response(output.response.payload, address)


# A program sends the same ContentType/Accept call after call: their client context is encoded
# once (a few of them, bounded), not on every call.
_CONTEXTS = {}  # type: Dict[Tuple[Tuple[str, str], ...], bytes]
_MAX_CONTEXTS = 32


def _client_context(metadata: Dict[str, str]) -> bytes:
    """base64(JSON {"custom": metadata}), as the AWS SDK sends it."""
    key = tuple(metadata.items())
    context = _CONTEXTS.get(key)
    if context is None:
        context = base64.b64encode(json.dumps({"custom": metadata}).encode("utf-8"))
        if len(_CONTEXTS) < _MAX_CONTEXTS and sum(len(k) + len(v) for k, v in key) <= 1024:
            _CONTEXTS[key] = context
    return context


def _response(payload: bytes, address: str) -> Dict[str, Any]:
    try:
        response = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise GreengrassDependencyException(
            "the inference service at {} answered something that is not JSON: {}".format(address, exc))
    if not isinstance(response, dict) or BODY not in response:
        raise GreengrassDependencyException(
            'the inference service at {} answered JSON without a "Body"'.format(address))
    body = response[BODY]
    if not isinstance(body, str):
        body = json.dumps(body)
    response[BODY] = StreamingBody(body.encode("utf-8"))
    return response
