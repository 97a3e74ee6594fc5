"""The Greengrass V1 local IPC protocol: names, paths and the few encodings both ends share.

Header names and casing, the API version and the URL layout are those of the Greengrass core's own
Python IPC client (``greengrass_ipc_python_sdk/ipc_client.py``, shipped with the core and vendored
in Lambda packages), so a real core, the Greengrass V2 Lambda launcher and our standalone host are
interchangeable behind the same client code.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Dict, Optional, Tuple, Union
from urllib.parse import quote, unquote

API_VERSION = "2016-11-01"
FUNCTIONS_PREFIX = "/{}/functions/".format(API_VERSION)
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"  # Prometheus text format; a valid token required, as for the health details

HEADER_AUTH_TOKEN = "Authorization"
HEADER_INVOCATION_ID = "X-Amz-InvocationId"
HEADER_CLIENT_CONTEXT = "X-Amz-Client-Context"
HEADER_INVOCATION_TYPE = "X-Amz-Invocation-Type"
HEADER_FUNCTION_ERROR = "X-Amz-Function-Error"

INVOCATION_REQUEST_RESPONSE = "RequestResponse"
INVOCATION_EVENT = "Event"
INVOCATION_TYPES = (INVOCATION_REQUEST_RESPONSE, INVOCATION_EVENT)

# "Handled": the function itself reported the error (post_handler_err). "Unhandled": the core
# reports it (timeouts, crashes), as documented for greengrasssdk Lambda.Client.invoke.
FUNCTION_ERROR_HANDLED = "Handled"
FUNCTION_ERROR_UNHANDLED = "Unhandled"
FUNCTION_ERRORS = (FUNCTION_ERROR_HANDLED, FUNCTION_ERROR_UNHANDLED)

ENV_AUTH_TOKEN = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
ENV_DAEMON_PORT = "GG_DAEMON_PORT"
ENV_FUNCTION_ARN = "MY_FUNCTION_ARN"
ENV_REGION = "AWS_REGION"
DEFAULT_DAEMON_PORT = 8000

# X-Amz-Client-Context is the caller's: bounded before it is parsed. The size is the host's header
# line limit (http.server's and http.client's 64 KiB), so no context that ever passed is refused;
# the depth is far above what any Greengrass client sends ({"custom": {...}}: 2).
MAX_CLIENT_CONTEXT_BYTES = 64 * 1024
MAX_CLIENT_CONTEXT_DEPTH = 32

# The function a Lambda posts its MQTT publishes to (greengrasssdk's iot-data client does).
GGROUTER_ARN = "arn:aws:lambda:::function:GGRouter"
# The rules our host's GGRouter judges a publish by: rule -> (status, errorType) of the refusal
# (connector.standalone.ggrouter.topics), so that a publisher knows which refusals are for good.
GGROUTER_RULES = {
    "bad_client_context": (400, "InvalidClientContext"),
    "bad_topic": (400, "InvalidTopic"),
    "topic_too_long": (400, "TopicTooLong"),
    "topic_too_deep": (400, "TopicTooDeep"),
    "reserved_topic": (403, "ReservedTopic"),
    "not_allowed": (403, "TopicNotAllowed"),
    "message_too_large": (413, "MessageTooLarge"),
    "queue_full": (429, "TooManyRequestsException"),
}

# Addresses of the AWS ML services, as greengrass_machine_learning_sdk builds them.
INFERENCE_ARN_FORMAT = "arn:aws:lambda:{region}:aws:function:GG-ML-INF-{algo_type}-{service_name}"
FEEDBACK_ARN_FORMAT = "arn:aws:lambda:{region}:aws:function:MLFeedback"

# ARN characters are path-safe except in exotic qualifiers; quoting the rest keeps http.client
# (which refuses control characters and spaces) and the host's parser in agreement.
_ARN_SAFE = ":$@!*'()+,;=-._~"

# Endpoints below the function base path.
ENDPOINT_BASE = ""
ENDPOINT_WORK = "work"
ENDPOINT_INITIALIZED = "initialized"


def inference_function_arn(region: str, algo_type: str, service_name: str) -> str:
    """The address the SDK posts to for ``invoke_inference_service(AlgoType, ServiceName)``."""
    return INFERENCE_ARN_FORMAT.format(region=region, algo_type=algo_type, service_name=service_name)


def feedback_function_arn(region: str) -> str:
    """The address the SDK's ``client('feedback').publish`` posts to."""
    return FEEDBACK_ARN_FORMAT.format(region=region)


def function_path(function_arn: str, endpoint: str = ENDPOINT_BASE) -> str:
    """The request path of one endpoint of `function_arn`."""
    path = FUNCTIONS_PREFIX + quote(function_arn, safe=_ARN_SAFE)
    return path + "/" + endpoint if endpoint else path


def parse_function_path(path: str) -> Optional[Tuple[str, str]]:
    """Split a request path into (function ARN, endpoint); None when it is not a function path."""
    path = path.split("?", 1)[0]
    if not path.startswith(FUNCTIONS_PREFIX):
        return None
    rest = path[len(FUNCTIONS_PREFIX):]
    endpoint = ENDPOINT_BASE
    for candidate in (ENDPOINT_WORK, ENDPOINT_INITIALIZED):
        if rest.endswith("/" + candidate):
            rest = rest[: -len(candidate) - 1]
            endpoint = candidate
            break
    arn = unquote(rest)
    if not arn or "/" in arn:
        return None
    return arn, endpoint


def encode_client_context(custom: Dict[str, Any]) -> str:
    """base64(JSON {"custom": ...}): the X-Amz-Client-Context value Greengrass clients send."""
    return base64.b64encode(json.dumps({"custom": custom}).encode("utf-8")).decode("ascii")


def decode_client_context(value: Optional[str]) -> Dict[str, Any]:
    """The JSON object inside an X-Amz-Client-Context value ({} when there is none).

    Raises ValueError naming what is wrong, because a handler must not silently run without the
    metadata (content type, feedback config) its caller sent. The value is a caller's: it is
    refused over MAX_CLIENT_CONTEXT_BYTES and, by a linear scan before json.loads, when nested
    deeper than MAX_CLIENT_CONTEXT_DEPTH (json.loads recurses: 20 000 levels raise RecursionError).
    """
    if not value:
        return {}
    if len(value) > MAX_CLIENT_CONTEXT_BYTES:
        raise ValueError("{} is {} characters, over the limit of {}".format(
            HEADER_CLIENT_CONTEXT, len(value), MAX_CLIENT_CONTEXT_BYTES))
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("{} is not base64 of a JSON object: {}".format(HEADER_CLIENT_CONTEXT, exc))
    if nesting_exceeds(decoded, MAX_CLIENT_CONTEXT_DEPTH):
        raise ValueError("{} is JSON nested deeper than {} levels".format(
            HEADER_CLIENT_CONTEXT, MAX_CLIENT_CONTEXT_DEPTH))
    try:
        document = json.loads(decoded.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError("{} is not base64 of a JSON object: {}".format(HEADER_CLIENT_CONTEXT, exc))
    if not isinstance(document, dict):
        raise ValueError("{} is JSON but not an object".format(HEADER_CLIENT_CONTEXT))
    return document


# The bytes that matter to nesting: brackets, and what starts, ends or escapes a string.
_JSON_STRUCTURE = re.compile(rb'[\\"\[\]{}]')


def nesting_exceeds(text: Union[str, bytes], limit: int) -> bool:
    """True when the JSON `text` opens more than `limit` arrays/objects inside each other.

    Brackets inside strings do not count. Linear in len(text) and stops at the first level over
    `limit`, whatever the text holds (it need not be valid JSON: json.loads judges that)."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    depth, in_string, skip_to = 0, False, -1
    for match in _JSON_STRUCTURE.finditer(text):
        at = match.start()
        if at < skip_to:  # the character after a backslash
            continue
        char = text[at]
        if in_string:
            if char == 0x5C:  # backslash: skip what it escapes
                skip_to = at + 2
            elif char == 0x22:
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif char in (0x5D, 0x7D):
            depth -= 1
    return False


def error_body(message: str, error_type: Optional[str] = None) -> bytes:
    """The JSON error document of a function error or an IPC refusal: {"errorMessage", "errorType"}."""
    document: Dict[str, Any] = {"errorMessage": message}
    if error_type:
        document["errorType"] = error_type
    return json.dumps(document).encode("utf-8")


def error_message_of(body: bytes) -> str:
    """The errorMessage inside an error body, or the body itself as text when it has none."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", "replace")
    if isinstance(document, dict) and "errorMessage" in document:
        return str(document["errorMessage"])
    return body.decode("utf-8", "replace")


def function_name_of(function_arn: str) -> Tuple[str, Optional[str]]:
    """(name, qualifier) of a Lambda ARN ``arn:aws:lambda:<region>:<account>:function:<name>[:<q>]``.

    Anything not shaped like that is returned whole as the name, so odd ARNs still get a context.
    """
    parts = function_arn.split(":")
    if len(parts) >= 7 and parts[5] == "function":
        return parts[6], (parts[7] if len(parts) > 7 and parts[7] else None)
    return function_arn, None
