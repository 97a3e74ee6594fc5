"""Where the IPC endpoint is: the Greengrass core of this Lambda, or a standalone host.

Inside Greengrass (``AWS_CONTAINER_AUTHORIZATION_TOKEN`` or ``MY_FUNCTION_ARN`` set) the core is at
``localhost:$GG_DAEMON_PORT`` (8000) with that token, in ``$AWS_REGION``. Otherwise the standalone
host's client file gives host, port, token, region and the service's timeout. Its location and
format (kept in step with ``connector/ipc/clientfile.py``, which this SDK must not import, because
it must stay copyable alone into a Lambda):

1. ``$GG_ML_IPC_FILE``;
2. ``$XDG_RUNTIME_DIR/greengrass-ml/ipc.json``;
3. ``~/.config/greengrass-ml/ipc.json``;

``{"version": 2, "services": {<name>: {"host", "port", "token", "region", "pid", "started",
"timeout_s", "fast"}}}``: the entry named like the ServiceName called, else the only entry whose
process still runs (an entry of a dead process is stale and never used). ``fast`` is the host's
offer of the fast path (see :mod:`._fast`).

The file is refused when another unprivileged user could have replaced it (OpenSSH's rule: the
file and every directory above it owned by root or the file's owner and writable by nobody else,
except sticky directories above the file's own, like ``/tmp``): whoever can swap it receives the
images and answers for the service.

The file's region wins over ``$AWS_REGION`` there: the ARNs must be the ones the host's owner
registered, whatever region the user's shell happens to be set to.
"""
from __future__ import annotations

import collections
import json
import os
import stat
import threading
from typing import Any, Dict, Mapping, Optional, Tuple

from . import _fast
from .exception import GreengrassDependencyException

ENV_AUTH_TOKEN = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
ENV_FUNCTION_ARN = "MY_FUNCTION_ARN"
ENV_DAEMON_PORT = "GG_DAEMON_PORT"
ENV_REGION = "AWS_REGION"
ENV_CLIENT_FILE = "GG_ML_IPC_FILE"
DEFAULT_DAEMON_PORT = 8000
MAX_FILE_BYTES = 1024 * 1024

# timeout_s: the service's own timeout where the client file says it (None inside Greengrass);
# fast: the host's fast-path socket (_fast.FastSocket) where its entry offers one, else None.
Endpoint = collections.namedtuple("Endpoint", ["host", "port", "token", "region", "source",
                                               "timeout_s", "fast"])
Endpoint.__new__.__defaults__ = (None, None)


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


def unsafe_reason(path: str) -> Optional[str]:
    """Why the file at `path` could have been replaced by another unprivileged user, else None.
    The directories are judged where they really are (links resolved); a file of neither root
    nor this user is trusted only where no directory above lets others create entries, sticky or
    not (connector.files.unsafe_reason states the same rule)."""
    path = os.path.abspath(path)
    path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "{} is a symbolic link".format(path)
    owner = st.st_uid
    if st.st_mode & 0o022:
        return "{} is writable by {} (mode {:o})".format(
            path, "others" if st.st_mode & 0o002 else "its group", stat.S_IMODE(st.st_mode))
    directory, leaf = os.path.dirname(path), True
    while True:
        dst = os.stat(directory)
        if dst.st_uid not in (0, owner):
            return "{} belongs to uid {}, not to root or the file's owner (uid {})".format(
                directory, dst.st_uid, owner)
        if dst.st_mode & 0o022 and (leaf or not dst.st_mode & stat.S_ISVTX):
            return "{} is writable by {} (mode {:o})".format(
                directory, "others" if dst.st_mode & 0o002 else "its group",
                stat.S_IMODE(dst.st_mode))
        if dst.st_mode & 0o022 and owner not in (0, os.geteuid()):
            return ("{} belongs to uid {}, neither root nor this user (uid {}), under {}, where any "
                    "user may create entries (mode {:o}): another user could have made it first"
                    .format(path, owner, os.geteuid(), directory, stat.S_IMODE(dst.st_mode)))
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory, leaf = parent, False


START_TOLERANCE_TICKS = 5 * (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


def process_start(pid: int) -> Optional[int]:
    try:
        try:
            # The main thread's own entry: under qemu-user, /proc/<pid>/stat read by the process
            # itself comes from qemu, with the start time of the calling thread.
            with open("/proc/{0}/task/{0}/stat".format(pid), "rb") as handle:
                text = handle.read()
        except FileNotFoundError:  # no task directory (old or unusual /proc)
            with open("/proc/{}/stat".format(pid), "rb") as handle:
                text = handle.read()
        return int(text[text.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def is_alive(entry: Mapping[str, Any]) -> bool:
    """False when the entry's host process is gone (a stale entry)."""
    pid = entry.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = entry.get("started")
    if not isinstance(started, int):
        return True
    now = process_start(pid)
    # Close, not equal: under qemu-user a process reads its own start time from qemu, a few ticks
    # later than the kernel's (as connector/ipc/clientfile.py).
    return now is None or abs(now - started) <= START_TOLERANCE_TICKS


def read_client_file(path: str, service_name: Optional[str] = None) -> Dict[str, Any]:
    """The entry to use; OSError/ValueError naming the problem."""
    reason = unsafe_reason(path)
    if reason:
        raise ValueError("refusing it: {}, so another user could have replaced it (make it and its "
                         "directories writable only by their owner)".format(reason))
    with open(path, "rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError("it is larger than {} bytes".format(MAX_FILE_BYTES))
    document = json.loads(data.decode("utf-8"))
    if isinstance(document, dict) and "services" not in document:
        document = {"services": {"": document}}  # version 1: one host
    services = document.get("services") if isinstance(document, dict) else None
    if not isinstance(services, dict):
        raise ValueError("it is not a greengrass-ml client file")
    found = {k: v for k, v in services.items() if isinstance(v, dict) and "port" in v and "token" in v}
    if service_name is not None and service_name in found:
        if not is_alive(found[service_name]):
            raise ValueError("its entry for {} belongs to process {}, which is gone (stale): the "
                             "service is not running".format(service_name, found[service_name].get("pid")))
        return found[service_name]
    live = [v for v in found.values() if is_alive(v)]
    if len(live) == 1:
        return live[0]
    if not live:
        raise ValueError("it lists no running host{}".format(
            " (stale: {})".format(", ".join(sorted(found))) if found else ""))
    raise ValueError("it lists several hosts ({}) and none is named {}".format(
        ", ".join(sorted(found)), service_name))


def in_greengrass(environ: Optional[Mapping[str, str]] = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get(ENV_AUTH_TOKEN) or env.get(ENV_FUNCTION_ARN))


def resolve(environ: Optional[Mapping[str, str]] = None,
            service_name: Optional[str] = None) -> Endpoint:
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
        document = read_client_file(path, service_name)
        port = int(document["port"])
        token = str(document["token"])
        timeout = document.get("timeout_s")
        timeout = float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else None
    except FileNotFoundError:
        raise GreengrassDependencyException(
            "no Greengrass core and no standalone inference host: {} and {} are not set and the "
            "host's client file {} does not exist (start the inference service, or set {} to "
            "its client file)".format(ENV_AUTH_TOKEN, ENV_FUNCTION_ARN, path, ENV_CLIENT_FILE))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GreengrassDependencyException(
            "cannot use the standalone host's client file {}: {}".format(path, exc))
    return Endpoint(str(document.get("host") or "127.0.0.1"), port, token,
                    document.get("region") or env.get(ENV_REGION), "client file " + path, timeout,
                    _fast.offered(document, path))


# Reading and checking the client file costs about 0.45 ms (the safety walk up its directories and
# the JSON); a program calling the service in a loop would pay it on every call. The endpoint
# found is kept per (client file, service name) while the file stays the same file with the same
# content (inode, size, times, mode, owner: replacing or rewriting it changes them; one stat is
# ~2 us), and dropped when a call with it fails (see forget()).
_cache_lock = threading.Lock()
_cache = {}  # type: Dict[Tuple[str, Optional[str]], Tuple[Tuple[int, ...], Endpoint]]


def _fingerprint(path: str) -> Optional[Tuple[int, ...]]:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid)


def cached(environ: Optional[Mapping[str, str]] = None,
           service_name: Optional[str] = None) -> Endpoint:
    """:func:`resolve`, remembering a client file's endpoint while the file is unchanged."""
    env = os.environ if environ is None else environ
    if in_greengrass(env):
        return resolve(env, service_name)  # environment variables only: nothing to save
    path = client_file_path(env)
    key = (path, service_name)
    seen = _fingerprint(path)
    with _cache_lock:
        kept = _cache.get(key)
    if kept is not None and seen is not None and kept[0] == seen:
        return kept[1]
    endpoint = resolve(env, service_name)
    if seen is not None and _fingerprint(path) == seen:  # not rewritten while it was read
        with _cache_lock:
            _cache[key] = (seen, endpoint)
    return endpoint


def forget(endpoint: Endpoint) -> bool:
    """Drop `endpoint` from the cache (a call with it failed); True when it was cached, so that
    looking again may find another one."""
    with _cache_lock:
        stale = [key for key, (_, kept) in _cache.items() if kept == endpoint]
        for key in stale:
            del _cache[key]
    return bool(stale)
