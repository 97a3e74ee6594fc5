"""``serve`` (the IPC host and the connector in one process, what most standalone users run) and
``host`` (the IPC host alone, for functions that attach to it from other processes).

Start-up and shutdown are one list each (an ExitStack): what started is undone in reverse order
on a failed start as on SIGTERM. Stopping drains first: the host refuses new work and lets the
requests in flight finish while the connector still answers them; then the connector's loop, the
services beside it (feedback, GGRouter), and the inference workers.

Start-up problems (port in use, bad address, unsafe client-file directory, bad parameters) raise
ConnectorError with one line; ``python -m connector`` prints it and exits 2.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Mapping, Optional, Sequence

from .. import settings
from ..errors import InferenceTimeoutError, ParameterError, excerpt
from ..feedback.config import load_parameters as load_feedback_parameters
from ..ipc import IPCHost, clientfile, protocol
from ..ipc.auth import new_token
from ..ipc.host import DEFAULT_MAX_BODY_BYTES, HostLimits
from ..ipc.runtime import LambdaThread
from ..logs import configure_logging
from ..params import Parameters, load_parameters
from ..service import metrics
from ..service.lambda_handler import ConnectorHandler
from ..service.health import Health
from ..service.inference import SupervisedService
from ..supervision.sizing import requested_workers
from .companions import Companions
from .ggrouter.settings import MqttSettings
from .heap import limit_arenas
from .lifecycle import reload_on_sighup, stop_on_signals, wait_for

log = logging.getLogger("connector.standalone.serve")

ALGO_TYPE = "object-detection"
SHUTDOWN_GRACE_S = 10.0


def service_arn(region: str, params: Parameters) -> str:
    """The address the SDK derives from AlgoType and ServiceName."""
    return protocol.inference_function_arn(region, ALGO_TYPE, params.service_name)


def daemon_port(environ: Optional[Mapping[str, str]] = None) -> int:
    """``GG_DAEMON_PORT`` (default 8000); ParameterError naming it when it is no port."""
    text = settings.get(protocol.ENV_DAEMON_PORT, environ)
    if not (text.isascii() and text.isdigit() and int(text) < 65536):
        raise ParameterError("{}={} is not a port number".format(protocol.ENV_DAEMON_PORT, excerpt(text, 20)))
    return int(text)


def start_host(port: Optional[int], bind: str, env: Mapping[str, str], result_timeout_s: float,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, name: str = clientfile.DEFAULT_NAME,
               client_file_group: Optional[str] = None, fast_path: bool = True) -> IPCHost:
    # The callers' token is never taken from AWS_CONTAINER_AUTHORIZATION_TOKEN here: in a
    # Lambda-like environment that is a function's credential, which callers must not share.
    return IPCHost(host=bind, port=daemon_port(env) if port is None else port, token=new_token(),
                   region=settings.get(protocol.ENV_REGION, env), name=name,
                   client_file=clientfile.default_path(env), client_file_group=client_file_group,
                   result_timeout_s=result_timeout_s,
                   limits=HostLimits(max_body_bytes=max_body_bytes), fast=fast_path).start()


def serve(config: Optional[str] = None, port: Optional[int] = None, bind: str = "127.0.0.1",
          environ: Optional[Mapping[str, str]] = None, concurrency: int = 2,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, feedback_config: Optional[str] = None,
          mqtt: Optional[MqttSettings] = None, client_file_group: Optional[str] = None,
          fast_path: bool = True) -> int:
    """Host and connector in one process until SIGTERM/SIGINT; returns the exit status.

    With `mqtt` the host serves GGRouter by forwarding to that broker; with feedback parameters
    (`feedback_config` or the environment) it runs the ML Feedback service (.companions).
    """
    env = settings.environment(environ)
    params = load_parameters(config, env)
    # Every parameter is checked before anything starts: a bad one is one message and exit 2.
    feedback = load_feedback_parameters(feedback_config, env)
    requested_workers(env)
    mqtt = mqtt if mqtt is not None else MqttSettings.from_options(environ=env)
    configure_logging(params.service_name)
    limit_arenas()
    stop = stop_on_signals()
    health = Health(state="starting", service=params.service_name, model=params.model_resource_id)
    with contextlib.ExitStack() as undo:
        host = start_host(port, bind, env, params.timeout_seconds, max_body_bytes,
                          params.service_name, client_file_group, fast_path)
        undo.callback(host.shutdown, grace_s=0)  # a start that fails later: close at once
        arn = service_arn(host.region, params)
        # Callers that come while the model loads are told to retry (the SDK waits), not that
        # nothing serves their address.
        host.board.starting(arn, "its model {} is loading".format(params.model_resource_id))
        service = SupervisedService.from_parameters(params, env)
        undo.callback(service.close)
        companions = Companions(host, env, mqtt, feedback, params)
        undo.callback(companions.close)
        loop = _serve_connector(host, arn, params, ConnectorHandler(service, companions.feeder),
                                max(concurrency, len(service.pool.supervisors) + 1))
        undo.callback(loop.stop, SHUTDOWN_GRACE_S)
        undo.callback(host.shutdown, grace_s=SHUTDOWN_GRACE_S)  # the first thing done on stopping
        reload_on_sighup(service)
        _describe(health, host, arn, service, companions)
        host.set_ready()
        log.info("serving %s on %s (model %s)", arn, host.url, params.model_path)
        wait_for(stop)
        health.top["state"] = "stopping"
    return 0


def _serve_connector(host: IPCHost, arn: str, params: Parameters, handler: ConnectorHandler,
                     concurrency: int) -> LambdaThread:
    # Every invocation's deadline is the service timeout; the host answers a caller whose
    # deadline passes with the service's own timeout message.
    host.register_function(arn, timeout_s=params.timeout_seconds,
                           timeout_message=InferenceTimeoutError.MESSAGE.format(
                               seconds=params.timeout_seconds,
                               reason="invocation {invocation_id} was not answered in time"))
    # One poller more than workers: the next request is taken (and waits for a free worker)
    # while every worker is busy, so no worker idles between requests.
    return LambdaThread(arn, handler, host.function_client(arn), concurrency, name="connector")


def _describe(health: Health, host: IPCHost, arn: str, service: SupervisedService,
              companions: Companions) -> None:
    """What /healthz, /readyz and /metrics say, from the sections each part owns."""
    health.top.update(state="ready", function_arn=arn)
    health.add("requests", service.describe_requests)
    health.add("worker", service.describe_worker)
    health.add("board", lambda: host.board.describe(arn))
    health.add("connections", host.describe_connections)
    companions.describe_into(health)
    host.set_health(health.document)
    host.set_readiness(lambda: service.pool.state == "ready")
    host.set_metrics(lambda: metrics.render(service.params.service_name, service.metrics,
                                            health.document(), service.resident_bytes()))


def host_only(port: Optional[int] = None, bind: str = "127.0.0.1",
              environ: Optional[Mapping[str, str]] = None, result_timeout_s: float = 30.0,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, mqtt: Optional[MqttSettings] = None,
              functions: Sequence[str] = (), name: str = clientfile.DEFAULT_NAME,
              client_file_group: Optional[str] = None, fast_path: bool = True) -> int:
    """The IPC host alone (GGRouter too, with a broker) until SIGTERM/SIGINT; `functions` are
    the ARNs that may attach, each with its own token."""
    env = settings.environment(environ)
    configure_logging(name)
    limit_arenas()
    mqtt = mqtt if mqtt is not None else MqttSettings.from_options(environ=env)
    stop = stop_on_signals()
    with contextlib.ExitStack() as undo:
        host = start_host(port, bind, env, result_timeout_s, max_body_bytes, name, client_file_group,
                          fast_path)
        undo.callback(host.shutdown, grace_s=0)
        companions = Companions(host, {}, mqtt)
        undo.callback(companions.close)
        undo.callback(host.shutdown, grace_s=SHUTDOWN_GRACE_S)
        for arn in functions:
            host.register_function(arn, served=False)  # served while its worker polls
        health = Health(state="ready")
        health.add("connections", host.describe_connections)
        companions.describe_into(health)
        host.set_health(health.document)
        host.set_ready()
        wait_for(stop)
        health.top["state"] = "stopping"
    return 0
