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
from .ipc.local import BoardClient
from .logs import configure_logging
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
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> int:
    """Host and connector in one process until SIGTERM/SIGINT; returns the exit status."""
    env = os.environ if environ is None else environ
    params = load_parameters(config, env)
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
    _reload_on_sighup(service)
    lambda_function.use_service(service)
    host.register_function(arn)
    worker_stop = threading.Event()
    loop = threading.Thread(target=run_lambda, name="connector",
                            args=(arn, lambda_function.function_handler, BoardClient(host.board)),
                            kwargs={"stop_event": worker_stop, "concurrency": concurrency})
    loop.start()
    state.update(state="ready", function_arn=arn)
    host.set_health(lambda: dict(state, **service.describe()))
    host.set_ready()
    log.info("serving %s on %s (model %s)", arn, host.url, params.model_path)
    _wait_for(stop)
    state["state"] = "stopping"
    host.shutdown(grace_s=SHUTDOWN_GRACE_S)
    worker_stop.set()
    loop.join(timeout=SHUTDOWN_GRACE_S)
    service.close()
    return 0


def host_only(port: Optional[int] = None, bind: str = "127.0.0.1",
              environ: Optional[Mapping[str, str]] = None, result_timeout_s: float = 30.0,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> int:
    env = os.environ if environ is None else environ
    configure_logging("ipc-host")
    stop = _stop_on_signals()
    host = _start_host(port, bind, env, result_timeout_s, health=lambda: {"state": "ready"},
                       max_body_bytes=max_body_bytes)
    host.set_ready()
    _wait_for(stop)
    host.shutdown(grace_s=SHUTDOWN_GRACE_S)
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
    if env.get(protocol.ENV_AUTH_TOKEN):
        client = IPCClient.from_environment(env)
        region = env.get(protocol.ENV_REGION) or DEFAULT_REGION
    else:
        path = clientfile.default_path(env)
        client = IPCClient.from_client_file(path)
        region = clientfile.read(path).get("region") or DEFAULT_REGION
    arn = env.get(protocol.ENV_FUNCTION_ARN) or service_arn(region, params)
    service = SupervisedService.from_parameters(params, env)
    _reload_on_sighup(service)
    lambda_function.use_service(service)
    try:
        client.initialized(arn, True, "model {} loaded".format(params.model_resource_id))
    except Exception as e:  # not every core implements it
        log.debug("initialized call not accepted: %s", e)
    run_lambda(arn, lambda_function.function_handler, client, stop_event=stop, concurrency=concurrency)
    service.close()
    return 0
