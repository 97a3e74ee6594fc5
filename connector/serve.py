"""Running the connector without Greengrass: the standalone host, and attaching to a host or core.

* ``serve``: the IPC host and the connector in one process (what most standalone users run);
* ``host``: only the IPC host, for connectors and other functions that attach to it
  (``--function ARN``, repeatable: the functions it serves, each given its own token);
* ``attach``: only the connector, polling a Greengrass core or our host through get_work, exactly
  as a Lambda runtime does. Its function token comes the way a core hands it to a Lambda:
  ``AWS_CONTAINER_AUTHORIZATION_TOKEN`` (with ``GG_DAEMON_PORT``); else ``--function-token-file``;
  else the token ``host --function`` wrote for its ARN in the function-token file next to the
  client file (0600, readable only by the host's user).

Start-up problems (port in use, bad address, unsafe client-file directory, bad parameters) raise
ConnectorError with one line; ``python -m connector`` prints it and exits 2.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from . import lambda_function
from .ipc import IPCClient, IPCHost, run_lambda
from .ipc import clientfile, protocol
from .errors import ConnectorError
from .ipc.host import DEFAULT_MAX_BODY_BYTES, DEFAULT_REGION
from .logs import configure_logging
from .memory import limit_arenas
from .params import Parameters, load_parameters
from .service import SupervisedService
from .workers import TIMEOUT_MESSAGE

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


def _health(state: Dict[str, Any], service: SupervisedService, host: IPCHost,
            arn: str) -> Dict[str, Any]:
    """The /healthz document: the service's state and what its callers experienced."""
    document = dict(state, **service.describe())
    seen = host.board.counters(arn)
    # The board answers callers whose deadline passed (queued or running); the worker pool
    # counts only the timeouts of work that came without a deadline, so none is counted twice.
    for key in ("timeouts", "abandoned"):  # both places count distinct invocations
        document[key] = document.get(key, 0) + seen.pop(key)
    document.update(seen)
    document.update(host.guard.counters)
    document["connections"] = host.guard.open_count()
    return document


def serve(config: Optional[str] = None, port: Optional[int] = None, bind: str = "127.0.0.1",
          environ: Optional[Mapping[str, str]] = None, concurrency: int = 2,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, client_file_group: Optional[str] = None
          ) -> int:
    """Host and connector in one process until SIGTERM/SIGINT; returns the exit status."""
    env = os.environ if environ is None else environ
    params = load_parameters(config, env)
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
    _reload_on_sighup(service)
    lambda_function.use_service(service)
    # Every invocation's deadline is the service timeout; the host answers a caller whose
    # deadline passes with the same message the worker pool uses.
    host.register_function(arn, timeout_s=params.timeout_seconds, timeout_message=TIMEOUT_MESSAGE.replace(
        "{why}", "invocation {invocation_id} was not answered in time"))
    worker_stop = threading.Event()
    loop = threading.Thread(target=run_lambda, name="connector",
                            args=(arn, lambda_function.function_handler, host.function_client(arn)),
                            kwargs={"stop_event": worker_stop, "concurrency": concurrency})
    loop.start()
    state.update(state="ready", function_arn=arn)
    host.set_health(lambda: _health(state, service, host, arn))
    host.set_readiness(lambda: service.pool.state == "ready")
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
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, functions: Sequence[str] = (),
              name: str = clientfile.DEFAULT_NAME, client_file_group: Optional[str] = None) -> int:
    """The IPC host alone; `functions` are the ARNs that may attach, each with its own token."""
    env = os.environ if environ is None else environ
    configure_logging(name)
    limit_arenas()
    stop = _stop_on_signals()
    host = _start_host(port, bind, env, result_timeout_s, health=lambda: {"state": "ready"},
                       max_body_bytes=max_body_bytes, name=name, client_file_group=client_file_group)
    for arn in functions:
        host.register_function(arn, served=False)  # served while its worker polls
    host.set_ready()
    _wait_for(stop)
    host.shutdown(grace_s=SHUTDOWN_GRACE_S)
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
    if env.get(protocol.ENV_AUTH_TOKEN):
        client = IPCClient.from_environment(env)
        region = env.get(protocol.ENV_REGION) or DEFAULT_REGION
        arn = env.get(protocol.ENV_FUNCTION_ARN) or service_arn(region, params)
    else:
        client, arn = _client_of_host(env, params, function_token_file, host_name)
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


def _client_of_host(env: Mapping[str, str], params: Parameters, token_file: Optional[str],
                    host_name: Optional[str]) -> "Tuple[IPCClient, str]":
    """A client holding this function's own token for the standalone host, and the ARN."""
    path = clientfile.default_path(env)
    try:
        entry = clientfile.read(path, host_name)
    except (OSError, ValueError) as exc:
        raise ConnectorError("cannot find a standalone IPC host: {}".format(
            exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)) from None
    arn = env.get(protocol.ENV_FUNCTION_ARN) or service_arn(entry.get("region") or DEFAULT_REGION,
                                                            params)
    if token_file:
        try:
            with open(token_file, "r", encoding="utf-8") as handle:
                token = handle.read(4096).strip()
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConnectorError("cannot read the function token file {!r}: {}".format(
                token_file, getattr(exc, "strerror", None) or exc)) from None
    else:
        token = clientfile.function_token(path, arn) or ""
    if not token:
        raise ConnectorError(
            "the IPC host {!r} gave no token to {}: start it with `host --function {}`, or pass the "
            "function's token in AWS_CONTAINER_AUTHORIZATION_TOKEN or --function-token-file".format(
                entry.get("name"), arn, arn))
    return IPCClient.from_client_file(path, name=entry.get("name"), token=token), arn
