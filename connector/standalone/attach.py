"""``attach`` and ``feedback``: the connector / the ML Feedback service as a separate Lambda
process, polling a Greengrass core or our host through get_work, exactly as a Lambda runtime does.

The function's token comes the way a core hands it to a Lambda: ``AWS_CONTAINER_AUTHORIZATION_TOKEN``
(with ``GG_DAEMON_PORT``); else ``--function-token-file``; else the token ``host --function`` wrote
for its ARN in the function-token file next to the client file (0600, readable only by the host's
user). The connector's feed to the feedback service goes out as a caller; the feedback service's
MQTT publishes (GGRouter) go out with its own function token, as a Lambda's do, since the host's
GGRouter grants topics by who publishes. Before any token is sent, the client file and the
function-token file must pass the SDK's safety rule (:func:`connector.ipc.clientfile.refuse_unsafe`:
no link, nothing another user could replace), and ``--function-token-file`` is read as a secret
(no link, writable only by its owner, at most 4 KiB); else one line says why, exit 2.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .. import settings
from ..errors import ConnectorError, ParameterError
from ..feedback import lambda_function as feedback_lambda
from ..feedback.config import MAP_PARAMETER as FEEDBACK_MAP_PARAMETER
from ..feedback.feeder import feeder_for
from ..ipc import IPCClient, clientfile, protocol
from ..ipc.runtime import run_lambda
from ..logs import configure_logging
from ..params import load_parameters
from ..service.lambda_handler import ConnectorHandler
from ..service.inference import SupervisedService
from .lifecycle import reload_on_sighup, stop_on_signals
from .serve import service_arn

log = logging.getLogger("connector.standalone.attach")

# A token is 43 characters (secrets.token_urlsafe(32)); a token file of more is not one.
MAX_TOKEN_FILE_BYTES = 4096


def attach(config: Optional[str] = None, environ: Optional[Mapping[str, str]] = None,
           concurrency: int = 1, function_token_file: Optional[str] = None,
           host_name: Optional[str] = None) -> int:
    """The connector as a separate Lambda process: bootstrap, then get_work until SIGTERM.

    The core (or host) is found from the Lambda environment (GG_DAEMON_PORT,
    AWS_CONTAINER_AUTHORIZATION_TOKEN, MY_FUNCTION_ARN), else from a standalone host's client file
    and the function token (see the module docstring).
    """
    env = dict(settings.environment(environ))
    params = load_parameters(config, env)
    configure_logging(params.service_name)
    stop = stop_on_signals()
    client, arn, region = _function_client(env, lambda r: service_arn(r, params), function_token_file,
                                           host_name)
    with contextlib.ExitStack() as undo:  # undone in reverse order, however the loop ends
        service = undo.enter_context(contextlib.closing(SupervisedService.from_parameters(params, env)))
        reload_on_sighup(service)
        feeder = feeder_for(params, _core_client(env, timeout=30, host_name=host_name)[0], region, env)
        if feeder is not None:
            undo.callback(feeder.close)
        _report_initialized(client, arn, "model {} loaded".format(params.model_resource_id))
        run_lambda(arn, ConnectorHandler(service, feeder), client, stop_event=stop,
                   concurrency=concurrency)
    return 0


def _core_client(env: Mapping[str, str], timeout: Optional[float] = None,
                 host_name: Optional[str] = None) -> "Tuple[IPCClient, str]":
    """A caller's client of the core (Lambda environment) or else of the standalone host (client
    file), and the region."""
    if settings.is_set(protocol.ENV_AUTH_TOKEN, env):
        return (IPCClient.from_environment(env, timeout=timeout), settings.get(protocol.ENV_REGION, env))
    entry = _host_entry(clientfile.default_path(env), host_name)
    return IPCClient.from_entry(entry, timeout=timeout), _region_of(entry)


def _function_client(env: Mapping[str, str], arn_of: Callable[[str], str], token_file: Optional[str],
                     host_name: Optional[str]) -> "Tuple[IPCClient, str, str]":
    """(client holding the function's own token, its ARN, the region)."""
    if settings.is_set(protocol.ENV_AUTH_TOKEN, env):  # inside a core, or started like a Lambda
        region = settings.get(protocol.ENV_REGION, env)
        return (IPCClient.from_environment(env),
                settings.get(protocol.ENV_FUNCTION_ARN, env) or arn_of(region), region)
    path = clientfile.default_path(env)
    entry = _host_entry(path, host_name)
    region = _region_of(entry)
    arn = settings.get(protocol.ENV_FUNCTION_ARN, env) or arn_of(region)
    try:  # both files are checked like the client file: a planted one must not lend a token
        token = (_read_token_file(token_file) if token_file
                 else clientfile.function_token(path, arn) or "")
    except (OSError, ValueError) as exc:
        raise ConnectorError("cannot use the function token file {!r}: {}".format(
            token_file or path + clientfile.FUNCTIONS_SUFFIX, _why(exc))) from None
    if not token:
        raise ConnectorError(
            "the IPC host {!r} gave no token to {}: start it with `host --function {}`, or pass the "
            "function's token in AWS_CONTAINER_AUTHORIZATION_TOKEN or --function-token-file".format(
                entry.get("name"), arn, arn))
    # The entry already read and checked, not the file again: it may have changed since.
    return IPCClient.from_entry(entry, token=token), arn, region


def _read_token_file(path: str) -> str:
    """The token in `--function-token-file`, read as a secret: no link, writable only by its owner,
    at most MAX_TOKEN_FILE_BYTES (ValueError otherwise, or unless it is one printable word)."""
    token = clientfile.read_file(path, "function token file", MAX_TOKEN_FILE_BYTES, private=True)
    token = token.strip()
    if not token or any(byte < 0x21 or byte > 0x7E for byte in token):
        raise ValueError("{} does not hold a token (one word of printable ASCII)".format(path))
    return token.decode("ascii")


def _host_entry(path: str, host_name: Optional[str]) -> Dict[str, Any]:
    """The host's entry in the client file at `path`, refused (one line) when the file fails the
    SDK's safety rule: whoever could replace it would receive the function's token."""
    try:
        return clientfile.read(path, host_name)
    except (OSError, ValueError) as exc:
        raise ConnectorError("cannot find a standalone IPC host: {}".format(_why(exc))) from None


def _region_of(entry: Mapping[str, Any]) -> str:
    region = entry.get("region")
    return region if isinstance(region, str) and region else settings.BY_NAME[protocol.ENV_REGION].default


def _why(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _report_initialized(client: IPCClient, arn: str, response: str) -> None:
    try:
        client.initialized(arn, True, response)
    except Exception as e:  # not every core implements it
        log.debug("initialized call not accepted: %s", e)


def attach_feedback(config: Optional[str] = None, environ: Optional[Mapping[str, str]] = None,
                    concurrency: int = 2, function_token_file: Optional[str] = None,
                    host_name: Optional[str] = None) -> int:
    """The ML Feedback service as a separate Lambda process attached to a core or host."""
    env = dict(settings.environment(environ))
    configure_logging(feedback_lambda.SERVICE_NAME)
    stop = stop_on_signals()
    client, arn, region = _function_client(env, protocol.feedback_function_arn, function_token_file,
                                           host_name)
    # GGRouter publishes carry the function's own token (a caller's would be refused).
    publisher = IPCClient(host=client.host, port=client.port, token=client.token, timeout=10)
    service = feedback_lambda.start_service(publisher, region, env, config)
    if service is None:
        raise ParameterError("no feedback parameters: give --config FILE or set {}".format(
            FEEDBACK_MAP_PARAMETER))
    with contextlib.closing(service):  # as attach() does: the delivery thread is stopped however the loop ends
        _report_initialized(client, arn, "ML Feedback service started")
        run_lambda(arn, service.handler, client, stop_event=stop, concurrency=concurrency)
    return 0
