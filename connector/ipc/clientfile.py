"""The client file: how local programs find a standalone host without any configuration.

The host writes a small JSON document ``{"host", "port", "token", "region", "pid"}`` that the
bundled ``greengrass_machine_learning_sdk`` reads when the Greengrass Lambda environment
(``AWS_CONTAINER_AUTHORIZATION_TOKEN`` / ``MY_FUNCTION_ARN``) is absent.

Location, first match wins:

1. ``$GG_ML_IPC_FILE`` (an explicit path; also how two hosts on one machine are kept apart);
2. ``$XDG_RUNTIME_DIR/greengrass-ml/ipc.json`` (per-user, tmpfs, gone at logout);
3. ``~/.config/greengrass-ml/ipc.json``.

The file holds the bearer token, so it is created mode 0600 in a 0700 directory and replaced
atomically (a reader never sees half a file). The SDK keeps its own copy of this lookup because it
must not import this package; ``tests/test_ml_sdk.py`` checks that the two agree.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, Mapping, Optional

ENV_CLIENT_FILE = "GG_ML_IPC_FILE"
DIR_NAME = "greengrass-ml"
FILE_NAME = "ipc.json"
FORMAT_VERSION = 1


def default_path(environ: Optional[Mapping[str, str]] = None) -> str:
    """Where the client file lives for this user (see the module docstring)."""
    env = os.environ if environ is None else environ
    explicit = env.get(ENV_CLIENT_FILE)
    if explicit:
        return os.path.expanduser(explicit)
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isdir(runtime_dir):
        return os.path.join(runtime_dir, DIR_NAME, FILE_NAME)
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".config", DIR_NAME, FILE_NAME)


def write(path: str, host: str, port: int, token: str, region: str) -> Dict[str, Any]:
    """Atomically write the client file (mode 0600); return what was written."""
    document = {
        "version": FORMAT_VERSION,
        "host": host,
        "port": int(port),
        "token": token,
        "region": region,
        "pid": os.getpid(),
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # mkstemp creates the file 0600 from the start: the token is never readable by others,
    # not even for the instant between create and chmod.
    fd, tmp = tempfile.mkstemp(prefix="." + FILE_NAME + ".", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return document


def read(path: str) -> Dict[str, Any]:
    """The client file's content; OSError/ValueError when it is missing or not a client file."""
    with open(path, "r", encoding="utf-8") as handle:
        document = json.load(handle)
    if not isinstance(document, dict) or not {"port", "token"} <= set(document):
        raise ValueError("{} is not a greengrass-ml client file (needs port and token)".format(path))
    return document


def remove_if_ours(path: str, token: str) -> bool:
    """Remove the client file only if it still describes our host (holds our token).

    A second host may have replaced the file since we wrote it; deleting that one would strand
    its clients.
    """
    try:
        if read(path).get("token") != token:
            return False
        os.unlink(path)
        return True
    except (OSError, ValueError):
        return False
