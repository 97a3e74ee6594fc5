"""Running the connector without Greengrass: the standalone host, and attaching to a host or core.

* ``serve``: the IPC host and the connector in one process (what most standalone users run);
* ``host``: only the IPC host, for connectors and other functions that attach to it
  (``--function ARN``, repeatable: the functions it serves, each given its own token);
* ``attach`` / ``feedback``: only the connector / the ML Feedback service, polling a Greengrass
  core or our host through get_work, exactly as a Lambda runtime does. The function's token comes
  the way a core hands it to a Lambda: ``AWS_CONTAINER_AUTHORIZATION_TOKEN`` (with
  ``GG_DAEMON_PORT``); else ``--function-token-file``; else the token ``host --function`` wrote for
  its ARN in the function-token file next to the client file (0600, readable only by the host's
  user). The connector's feed to the feedback service goes out as a caller; the feedback
  service's MQTT publishes (GGRouter) go out with its own function token, as a Lambda's do, since
  the host's GGRouter grants topics by who publishes (connector.mqtt_router).
  Before any token is sent, the client file and the function-token file must pass the SDK's
  safety rule (:func:`connector.ipc.clientfile.refuse_unsafe`: no link, nothing another user
  could replace), and ``--function-token-file`` is read as a secret (no link, writable only by
  its owner, at most 4 KiB); else one line says why, exit 2.

Start-up problems (port in use, bad address, unsafe client-file directory, bad parameters) raise
ConnectorError with one line; ``python -m connector`` prints it and exits 2.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from . import lambda_function
from .errors import ConnectorError, InferenceTimeoutError, ParameterError
from .feedback import lambda_function as feedback_lambda
from .feedback.config import MAP_PARAMETER as FEEDBACK_MAP_PARAMETER
from .feedback.config import load_parameters as load_feedback_parameters
from .feedback.feeder import feeder_for
from .host_services import HostServices
from .ipc import IPCClient, IPCHost, run_lambda
from .ipc import clientfile, protocol
from .ipc.host import DEFAULT_MAX_BODY_BYTES, DEFAULT_REGION
from .logs import configure_logging
from .memory import limit_arenas
from .mqtt_router import MqttSettings
from .params import Parameters, load_parameters
from .service import metrics
from .service.inference import SupervisedService
from .supervision.sizing import requested_workers

log = logging.getLogger("connector.serve")

ALGO_TYPE = "object-detection"
SHUTDOWN_GRACE_S = 10.0
# A token is 43 characters (secrets.token_urlsafe(32)); a token file of more is not one.
MAX_TOKEN_FILE_BYTES = 4096


def service_arn(region: str, params: Parameters) -> str:
    """The address the SDK derives from AlgoType and ServiceName."""
    return protocol.inference_function_arn(region, ALGO_TYPE, params.service_name)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        log.info("received %s: finishing in-flight requests", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def _reload_on_sighup(service: SupervisedService) -> None:
    """`kill -HUP <pid>` reloads the model in a fresh worker; the old one serves until it is ready."""
    def handle(_signum: int, _frame: Any) -> None:
        service.reload("SIGHUP")

    signal.signal(signal.SIGHUP, handle)


def _wait_for(stop: threading.Event) -> None:
    # Wake up regularly: Python runs signal handlers only in the main thread, and only when it runs
    # bytecode; a SIGTERM delivered to another thread would never wake a bare `stop.wait()`.
    while not stop.wait(0.5):
        pass


def _start_host(port: Optional[int], bind: str, env: Mapping[str, str], result_timeout_s: float,
                health: Any = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                name: str = clientfile.DEFAULT_NAME, client_file_group: Optional[str] = None
                ) -> IPCHost:
    if port is None:
        text = env.get(protocol.ENV_DAEMON_PORT) or str(protocol.DEFAULT_DAEMON_PORT)
        if not (text.isascii() and text.isdigit() and int(text) < 65536):
            raise ConnectorError("{}={!r} is not a port number".format(protocol.ENV_DAEMON_PORT,
                                                                        text[:20]))
        port = int(text)
    # The callers' token is never taken from AWS_CONTAINER_AUTHORIZATION_TOKEN here: in a
    # Lambda-like environment that is a function's credential, which callers must not share.
    return IPCHost(host=bind, port=port, token=secrets.token_urlsafe(32), region=env.get(protocol.ENV_REGION),
                   result_timeout_s=result_timeout_s, health=health, max_body_bytes=max_body_bytes,
                   name=name, client_file=clientfile.default_path(env),
                   client_file_group=client_file_group).start()


def _health(state: Dict[str, Any], service: SupervisedService, host: IPCHost, arn: str,
            services: HostServices) -> Dict[str, Any]:
    """The /healthz document: the service's state and what its callers experienced."""
    worker = service.describe_worker()
    document = dict(state, worker=worker.pop("state"),
                    refused=service.metrics.snapshot()[0].get("refused", 0), **worker)
    document.update(services.describe())
    document.update(host.board.counters(arn))
    document.update(host.guard.counters)
    document["connections"] = host.guard.open_count()
    return document


def serve(config: Optional[str] = None, port: Optional[int] = None, bind: str = "127.0.0.1",
          environ: Optional[Mapping[str, str]] = None, concurrency: int = 2,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, feedback_config: Optional[str] = None,
          mqtt: Optional[MqttSettings] = None, client_file_group: Optional[str] = None) -> int:
    """Host and connector in one process until SIGTERM/SIGINT; returns the exit status.

    With `mqtt` the host serves GGRouter by forwarding to that broker; with feedback parameters
    (`feedback_config` or the environment) it runs the ML Feedback service (connector.host_services).
    """
    env = os.environ if environ is None else environ
    params = load_parameters(config, env)
    # Every parameter is checked before anything starts: a bad one is one message and exit 2.
    feedback = load_feedback_parameters(feedback_config, env)
    requested_workers(env)
    if mqtt is None:
        mqtt = MqttSettings.from_options(environ=env)
    configure_logging(params.service_name)
    limit_arenas()
    stop = _stop_on_signals()
    state: Dict[str, Any] = {"state": "starting", "service": params.service_name,
                             "model": params.model_resource_id}
    host = _start_host(port, bind, env, params.timeout_seconds, health=lambda: dict(state),
                       max_body_bytes=max_body_bytes, name=params.service_name,
                       client_file_group=client_file_group)
    arn = service_arn(host.region, params)
    try:
        service = SupervisedService.from_parameters(params, env)
    except Exception:
        host.shutdown(grace_s=0)
        raise
    try:
        services = HostServices(host, env, mqtt, feedback, params)
    except Exception:
        host.shutdown(grace_s=0)
        service.close()
        raise
    _reload_on_sighup(service)
    lambda_function.use_service(service)
    lambda_function.use_feeder(services.feeder)
    # Every invocation's deadline is the service timeout; the host answers a caller whose
    # deadline passes with the same message the worker pool uses.
    host.register_function(arn, timeout_s=params.timeout_seconds, timeout_message=InferenceTimeoutError.MESSAGE.format(
        seconds=params.timeout_seconds, reason="invocation {invocation_id} was not answered in time"))
    worker_stop = threading.Event()
    # One poller more than workers: the next request is taken (and waits for a free worker)
    # while every worker is busy, so no worker idles between requests.
    concurrency = max(concurrency, len(service.pool.supervisors) + 1)
    loop = threading.Thread(target=run_lambda, name="connector",
                            args=(arn, lambda_function.function_handler, host.function_client(arn)),
                            kwargs={"stop_event": worker_stop, "concurrency": concurrency})
    loop.start()
    state.update(state="ready", function_arn=arn)
    host.set_health(lambda: _health(state, service, host, arn, services))
    host.set_readiness(lambda: service.pool.state == "ready")
    host.set_metrics(lambda: metrics.render(params.service_name, service.metrics,
                                            _health(state, service, host, arn, services),
                                            host.board.queue_depth(arn), service.resident_bytes()))
    host.set_ready()
    log.info("serving %s on %s (model %s)", arn, host.url, params.model_path)
    _wait_for(stop)
    state["state"] = "stopping"
    host.shutdown(grace_s=SHUTDOWN_GRACE_S)
    worker_stop.set()
    loop.join(timeout=SHUTDOWN_GRACE_S)
    lambda_function.use_feeder(None)
    services.close()
    service.close()
    return 0


def host_only(port: Optional[int] = None, bind: str = "127.0.0.1",
              environ: Optional[Mapping[str, str]] = None, result_timeout_s: float = 30.0,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, mqtt: Optional[MqttSettings] = None,
              functions: Sequence[str] = (), name: str = clientfile.DEFAULT_NAME,
              client_file_group: Optional[str] = None) -> int:
    """The IPC host alone (GGRouter too, with a broker) until SIGTERM/SIGINT; `functions` are
    the ARNs that may attach, each with its own token."""
    env = os.environ if environ is None else environ
    configure_logging(name)
    limit_arenas()
    if mqtt is None:
        mqtt = MqttSettings.from_options(environ=env)
    stop = _stop_on_signals()
    host = _start_host(port, bind, env, result_timeout_s, max_body_bytes=max_body_bytes, name=name,
                       client_file_group=client_file_group)
    try:
        services = HostServices(host, {}, mqtt)
    except Exception:
        host.shutdown(grace_s=0)
        raise
    for arn in functions:
        host.register_function(arn, served=False)  # served while its worker polls
    host.set_health(lambda: dict(state="ready", **services.describe()))
    host.set_ready()
    _wait_for(stop)
    host.shutdown(grace_s=SHUTDOWN_GRACE_S)
    services.close()
    return 0


def attach(config: Optional[str] = None, environ: Optional[Mapping[str, str]] = None,
           concurrency: int = 1, function_token_file: Optional[str] = None,
           host_name: Optional[str] = None) -> int:
    """The connector as a separate Lambda process: bootstrap, then get_work until SIGTERM.

    The core (or host) is found from the Lambda environment (GG_DAEMON_PORT,
    AWS_CONTAINER_AUTHORIZATION_TOKEN, MY_FUNCTION_ARN), else from a standalone host's client file
    and the function token (see the module docstring).
    """
    env = dict(os.environ if environ is None else environ)
    params = load_parameters(config, env)
    configure_logging(params.service_name)
    stop = _stop_on_signals()
    client, arn, region = _function_client(env, lambda r: service_arn(r, params), function_token_file,
                                           host_name)
    service = SupervisedService.from_parameters(params, env)
    _reload_on_sighup(service)
    lambda_function.use_service(service)
    feeder = feeder_for(params, _core_client(env, timeout=30, host_name=host_name)[0], region, env)
    lambda_function.use_feeder(feeder)
    _report_initialized(client, arn, "model {} loaded".format(params.model_resource_id))
    run_lambda(arn, lambda_function.function_handler, client, stop_event=stop, concurrency=concurrency)
    if feeder is not None:
        feeder.close()
    service.close()
    return 0


def _core_client(env: Mapping[str, str], timeout: Optional[float] = None,
                 host_name: Optional[str] = None) -> "Tuple[IPCClient, str]":
    """A caller's client of the core (Lambda environment) or else of the standalone host (client
    file), and the region."""
    if env.get(protocol.ENV_AUTH_TOKEN):
        return (IPCClient.from_environment(env, timeout=timeout),
                env.get(protocol.ENV_REGION) or DEFAULT_REGION)
    entry = _host_entry(clientfile.default_path(env), host_name)
    return IPCClient.from_entry(entry, timeout=timeout), entry.get("region") or DEFAULT_REGION


def _function_client(env: Mapping[str, str], arn_of: Callable[[str], str], token_file: Optional[str],
                     host_name: Optional[str]) -> "Tuple[IPCClient, str, str]":
    """(client holding the function's own token, its ARN, the region)."""
    if env.get(protocol.ENV_AUTH_TOKEN):  # inside a core, or started like a Lambda
        region = env.get(protocol.ENV_REGION) or DEFAULT_REGION
        return (IPCClient.from_environment(env), env.get(protocol.ENV_FUNCTION_ARN) or arn_of(region),
                region)
    path = clientfile.default_path(env)
    entry = _host_entry(path, host_name)
    region = entry.get("region") or DEFAULT_REGION
    arn = env.get(protocol.ENV_FUNCTION_ARN) or arn_of(region)
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
    env = dict(os.environ if environ is None else environ)
    configure_logging(feedback_lambda.SERVICE_NAME)
    stop = _stop_on_signals()
    client, arn, region = _function_client(env, protocol.feedback_function_arn, function_token_file,
                                           host_name)
    # GGRouter publishes carry the function's own token (a caller's would be refused).
    publisher = IPCClient(host=client.host, port=client.port, token=client.token, timeout=10)
    service = feedback_lambda.start_service(publisher, region, env, config)
    if service is None:
        raise ParameterError("no feedback parameters: give --config FILE or set {}".format(
            FEEDBACK_MAP_PARAMETER))
    _report_initialized(client, arn, "ML Feedback service started")
    run_lambda(arn, service.handler, client, stop_event=stop, concurrency=concurrency)
    service.close()
    return 0
