"""Where the IPC endpoint is: the Greengrass core of this Lambda, or a standalone host.

Inside Greengrass (``AWS_CONTAINER_AUTHORIZATION_TOKEN`` or ``MY_FUNCTION_ARN`` set) the core is at
``localhost:$GG_DAEMON_PORT`` (8000) with that token, in ``$AWS_REGION``. Otherwise the standalone
host's client file gives host, port, token and region. Its location (kept in step with
``connector/ipc/clientfile.py``, which this SDK must not import):

1. ``$GG_ML_IPC_FILE``;
2. ``$XDG_RUNTIME_DIR/greengrass-ml/ipc.json``;
3. ``~/.config/greengrass-ml/ipc.json``.

The file's region wins over ``$AWS_REGION`` there: the ARNs must be the ones the host's owner
registered, whatever region the user's shell happens to be set to.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Mapping, Optional

from .exception import GreengrassDependencyException

ENV_AUTH_TOKEN = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
ENV_FUNCTION_ARN = "MY_FUNCTION_ARN"
ENV_DAEMON_PORT = "GG_DAEMON_PORT"
ENV_REGION = "AWS_REGION"
ENV_CLIENT_FILE = "GG_ML_IPC_FILE"
DEFAULT_DAEMON_PORT = 8000

Endpoint = collections.namedtuple("Endpoint", ["host", "port", "token", "region", "source"])


def client_file_path(environ: Optional[Mapping[str, str]] = None) -> str:
    """The standalone host's client file location for this user."""
    env = os.environ if environ is None else environ
    explicit = env.get(ENV_CLIENT_FILE)
    if explicit:
        return os.path.expanduser(explicit)
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isdir(runtime_dir):
        return os.path.join(runtime_dir, "greengrass-ml", "ipc.json")
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".config", "greengrass-ml", "ipc.json")


def in_greengrass(environ: Optional[Mapping[str, str]] = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get(ENV_AUTH_TOKEN) or env.get(ENV_FUNCTION_ARN))


def resolve(environ: Optional[Mapping[str, str]] = None) -> Endpoint:
    """The endpoint to call now; GreengrassDependencyException when there is none."""
    env = os.environ if environ is None else environ
    if in_greengrass(env):
        port_text = env.get(ENV_DAEMON_PORT) or str(DEFAULT_DAEMON_PORT)
        try:
            port = int(port_text)
        except ValueError:
            raise GreengrassDependencyException(
                "{}={!r} is not a port number".format(ENV_DAEMON_PORT, port_text))
        return Endpoint("localhost", port, env.get(ENV_AUTH_TOKEN, ""), env.get(ENV_REGION),
                        "Greengrass Lambda environment")
    path = client_file_path(env)
    try:
        with open(path, "r", encoding="utf-8") as handle:
            document = json.load(handle)
        port = int(document["port"])
        token = str(document["token"])
    except FileNotFoundError:
        raise GreengrassDependencyException(
            "no Greengrass core and no standalone inference host: {} and {} are not set and the "
            "host's client file {} does not exist (start the inference service, or set {} to "
            "its client file)".format(ENV_AUTH_TOKEN, ENV_FUNCTION_ARN, path, ENV_CLIENT_FILE))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GreengrassDependencyException(
            "cannot use the standalone host's client file {}: {}".format(path, exc))
    return Endpoint(str(document.get("host") or "127.0.0.1"), port, token,
                    document.get("region") or env.get(ENV_REGION), "client file " + path)
