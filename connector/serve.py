"""Running the connector without Greengrass: the standalone host, and attaching to a host or core.

* ``serve``: the IPC host and the connector in one process (what most standalone users run);
* ``host``: only the IPC host, for connectors and other functions that attach to it;
* ``attach``: only the connector, polling a Greengrass core or our host through get_work, exactly
  as a Lambda runtime does.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Dict, Mapping, Optional

from . import lambda_function
from .ipc import IPCClient, IPCHost, run_lambda
from .ipc import clientfile, protocol
from .ipc.host import DEFAULT_MAX_BODY_BYTES, DEFAULT_REGION
from .errors import ParameterError
from .feedback.config import MAP_PARAMETER as FEEDBACK_MAP_PARAMETER
from .feedback.config import load_parameters as load_feedback_parameters
from .feedback import lambda_function as feedback_lambda
from .feedback.feeder import feeder_for
from .host_services import HostServices
from .ipc.local import BoardClient
from .logs import configure_logging
from .mqtt_router import MqttSettings
from .params import Parameters, load_parameters
from .service import SupervisedService

log = logging.getLogger("connector.serve")

ALGO_TYPE = "object-detection"
SHUTDOWN_GRACE_S = 10.0


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
                health: Any = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> IPCHost:
    if port is None:
        port = int(env.get(protocol.ENV_DAEMON_PORT) or protocol.DEFAULT_DAEMON_PORT)
    return IPCHost(host=bind, port=port, token=env.get(protocol.ENV_AUTH_TOKEN),
                   region=env.get(protocol.ENV_REGION), result_timeout_s=result_timeout_s,
                   health=health, max_body_bytes=max_body_bytes).start()


def serve(config: Optional[str] = None, port: Optional[int] = None, bind: str = "127.0.0.1",
          environ: Optional[Mapping[str, str]] = None, concurrency: int = 2,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, feedback_config: Optional[str] = None,
          mqtt: Optional[MqttSettings] = None) -> int:
    """Host and connector in one process until SIGTERM/SIGINT; returns the exit status.

    With `mqtt` the host serves GGRouter by forwarding to that broker; with feedback parameters
    (`feedback_config` or the environment) it runs the ML Feedback service (connector.host_services).
    """
    env = os.environ if environ is None else environ
    params = load_parameters(config, env)
    # Every parameter is checked before anything starts: a bad one is one message and exit 2.
    feedback = load_feedback_parameters(feedback_config, env)
    if mqtt is None:
        mqtt = MqttSettings.from_options(environ=env)
    configure_logging(params.service_name)
    stop = _stop_on_signals()
    state: Dict[str, Any] = {"state": "starting", "service": params.service_name,
                             "model": params.model_resource_id}
    # A little longer than the service timeout, so the service's own timeout error wins the race.
    host = _start_host(port, bind, env, params.timeout_seconds + 1.0, health=lambda: dict(state),
                       max_body_bytes=max_body_bytes)
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
    host.register_function(arn)
    worker_stop = threading.Event()
    loop = threading.Thread(target=run_lambda, name="connector",
                            args=(arn, lambda_function.function_handler, BoardClient(host.board)),
                            kwargs={"stop_event": worker_stop, "concurrency": concurrency})
    loop.start()
    state.update(state="ready", function_arn=arn)
    host.set_health(lambda: dict(state, **dict(service.describe(), **services.describe())))
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
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, mqtt: Optional[MqttSettings] = None) -> int:
    """The IPC host alone (GGRouter too, with a broker) until SIGTERM/SIGINT."""
    env = os.environ if environ is None else environ
    configure_logging("ipc-host")
    if mqtt is None:
        mqtt = MqttSettings.from_options(environ=env)
    stop = _stop_on_signals()
    host = _start_host(port, bind, env, result_timeout_s, max_body_bytes=max_body_bytes)
    try:
        services = HostServices(host, {}, mqtt)
    except Exception:
        host.shutdown(grace_s=0)
        raise
    host.set_health(lambda: dict(state="ready", **services.describe()))
    host.set_ready()
    _wait_for(stop)
    host.shutdown(grace_s=SHUTDOWN_GRACE_S)
    services.close()
    return 0


def attach(config: Optional[str] = None, environ: Optional[Mapping[str, str]] = None,
           concurrency: int = 1) -> int:
    """The connector as a separate Lambda process: bootstrap, then get_work until SIGTERM.

    The core (or host) is found from the Lambda environment (GG_DAEMON_PORT,
    AWS_CONTAINER_AUTHORIZATION_TOKEN, MY_FUNCTION_ARN), else from a standalone host's client file.
    """
    env = dict(os.environ if environ is None else environ)
    params = load_parameters(config, env)
    configure_logging(params.service_name)
    stop = _stop_on_signals()
    client, region = _core_client(env)
    arn = env.get(protocol.ENV_FUNCTION_ARN) or service_arn(region, params)
    service = SupervisedService.from_parameters(params, env)
    _reload_on_sighup(service)
    lambda_function.use_service(service)
    feeder = feeder_for(params, _core_client(env, timeout=30)[0], region, env)
    lambda_function.use_feeder(feeder)
    _report_initialized(client, arn, "model {} loaded".format(params.model_resource_id))
    run_lambda(arn, lambda_function.function_handler, client, stop_event=stop, concurrency=concurrency)
    if feeder is not None:
        feeder.close()
    service.close()
    return 0


def _core_client(env: Mapping[str, str], timeout: Optional[float] = None) -> "tuple[IPCClient, str]":
    """A client of the core (Lambda environment) or else of the standalone host (client file)."""
    if env.get(protocol.ENV_AUTH_TOKEN):
        return (IPCClient.from_environment(env, timeout=timeout),
                env.get(protocol.ENV_REGION) or DEFAULT_REGION)
    path = clientfile.default_path(env)
    return (IPCClient.from_client_file(path, timeout=timeout),
            clientfile.read(path).get("region") or DEFAULT_REGION)


def _report_initialized(client: IPCClient, arn: str, response: str) -> None:
    try:
        client.initialized(arn, True, response)
    except Exception as e:  # not every core implements it
        log.debug("initialized call not accepted: %s", e)


def attach_feedback(config: Optional[str] = None, environ: Optional[Mapping[str, str]] = None,
                    concurrency: int = 2) -> int:
    """The ML Feedback service as a separate Lambda process attached to a core or host."""
    env = dict(os.environ if environ is None else environ)
    configure_logging(feedback_lambda.SERVICE_NAME)
    stop = _stop_on_signals()
    client, region = _core_client(env)
    arn = env.get(protocol.ENV_FUNCTION_ARN) or protocol.feedback_function_arn(region)
    service = feedback_lambda.start_service(_core_client(env, timeout=10)[0], region, env, config)
    if service is None:
        raise ParameterError("no feedback parameters: give --config FILE or set {}".format(
            FEEDBACK_MAP_PARAMETER))
    _report_initialized(client, arn, "ML Feedback service started")
    run_lambda(arn, service.handler, client, stop_event=stop, concurrency=concurrency)
    service.close()
    return 0
