"""The client file: how local programs find a standalone host without any configuration.

The file is a JSON document ``{"version": 2, "services": {<name>: <entry>}}``; each running host
keeps its own entry, named by its service (``serve``: LocalInferenceServiceName; ``host``:
``--name``, default ``ipc-host``), ``{"host", "port", "token", "region", "pid", "started",
"timeout_s", "fast"}`` (``fast``: ``{"unix": <socket path>, "protocol": 1}`` where the host offers
the fast path, :mod:`connector.ipc.fast`; absent otherwise). Starting or stopping one host rewrites only its own entry (read-modify-write under
an ``flock`` on a lock file beside it, then an atomic rename). An entry whose process is gone
(``pid`` not running, or running since another time: ``started`` is the process start time from
``/proc``) is stale: readers skip it, and a new host of that name takes it over; a host refuses to
take over the entry of a live one. The bundled ``greengrass_machine_learning_sdk`` reads it when
the Greengrass Lambda environment (``AWS_CONTAINER_AUTHORIZATION_TOKEN`` / ``MY_FUNCTION_ARN``) is
absent, choosing the entry of the ServiceName it calls, else the only live one.

Location, first match wins:

1. ``$GG_ML_IPC_FILE`` (an explicit path);
2. ``$XDG_RUNTIME_DIR/greengrass-ml/ipc.json`` (per-user, tmpfs, gone at logout);
3. ``~/.config/greengrass-ml/ipc.json``.

Safety (the rule OpenSSH applies to its files, ``safe_path`` in auth.c): the file holds the callers'
token, and whoever can replace it redirects every client's images. So the file, its directory and
every directory above must be owned by root or by the file's owner and writable by nobody else;
only a directory *above* the file's own may be writable by others if it is sticky (``/tmp``),
because nobody can rename another user's entry there. The host refuses to start on an unsafe
directory (one line saying which and how to fix it) and creates a missing one 0700; the SDK
refuses an unsafe file, and so do ``attach``, ``feedback`` and :class:`IPCClient` before they
send any token (:func:`read`, :func:`function_token`). The file is 0600, or 0640 for a group the owner lets read it
(``--client-file-group``); group members may read, never write.

Function tokens (for functions that attach from another process, see :mod:`connector.ipc.host`)
live in a second file, ``<client file>.functions``, always 0600, ``{"version": 2, "functions":
{<arn>: {"token", "host": <entry name>, "pid", "started"}}}``.

The SDK keeps its own copy of the lookup and the safety rule because it must not import this
package; ``tests/sdk/test_ml_sdk.py`` checks that the two agree.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import json
import logging
import os
import stat
from typing import Any, Callable, Dict, Iterator, Mapping, Optional

from .. import settings
from ..errors import ClientFileError
from ..files import directory_reason, read_regular, unsafe_reason, write_atomic

log = logging.getLogger(__name__)

ENV_CLIENT_FILE = "GG_ML_IPC_FILE"
DIR_NAME = "greengrass-ml"
FILE_NAME = "ipc.json"
FUNCTIONS_SUFFIX = ".functions"
FORMAT_VERSION = 2
DEFAULT_NAME = "ipc-host"
# A client file is a few hundred bytes per entry; anything far larger was not written by a host.
MAX_FILE_BYTES = 1024 * 1024


def default_path(environ: Optional[Mapping[str, str]] = None) -> str:
    """Where the client file lives for this user (see the module docstring)."""
    explicit = settings.get(ENV_CLIENT_FILE, environ)
    if explicit:
        return os.path.expanduser(explicit)
    runtime_dir = settings.get("XDG_RUNTIME_DIR", environ)
    if runtime_dir and os.path.isdir(runtime_dir):
        return os.path.join(runtime_dir, DIR_NAME, FILE_NAME)
    home = settings.get("HOME", environ) or os.path.expanduser("~")
    return os.path.join(home, ".config", DIR_NAME, FILE_NAME)


# -- safety ------------------------------------------------------------------------------------

def check_directory(path: str, group: Optional[str] = None) -> None:
    """Make sure the host can write the client file at `path` safely: create a missing directory
    0700, or 0750 owned by `group` (the client-file group must reach the 0640 file; an existing
    directory is taken as it is, group-readable or not); raise ClientFileError (one line, with
    the fix) otherwise."""
    directory = os.path.dirname(os.path.abspath(path))
    gid = group_id(group) if group else None
    try:
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise NotADirectoryError(errno.ENOTDIR, "it exists and is not a directory")
            if gid is not None:
                _warn_if_out_of_reach(directory, gid)
        else:  # ours, fresh: let the group in (mkdir's mode is masked by the umask, so chmod)
            if gid is not None:
                os.chown(directory, -1, gid)
                os.chmod(directory, 0o750)
    except OSError as exc:
        raise ClientFileError("cannot create the client-file directory {}: {} (set {} to a file in a "
                              "directory you can write)".format(directory, _reason(exc),
                                                                ENV_CLIENT_FILE)) from None
    # The file itself is replaced by a rename, whoever wrote what is there now: the directory
    # is what must be safe.
    reason = directory_reason(directory)
    if reason:
        raise ClientFileError("unsafe client file location: {}; another user could replace the file "
                              "and receive the images. Fix: chmod go-w (and chown to this user) the "
                              "directories named, or set {} to a file in a directory only you can "
                              "write".format(reason, ENV_CLIENT_FILE))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ClientFileError("cannot write the client file in {}: permission denied (set {} to a "
                              "file in a directory you can write)".format(directory, ENV_CLIENT_FILE))
    if os.path.isdir(path):
        raise ClientFileError("the client file {} is a directory; remove it or set {}".format(
            path, ENV_CLIENT_FILE))


def _warn_if_out_of_reach(directory: str, gid: int) -> None:
    # An operator's directory is not changed (systemd's RuntimeDirectoryMode= says 0750), but a
    # group that cannot pass through it would see only "permission denied" on every call.
    st = os.stat(directory)
    if not (st.st_mode & 0o001 or (st.st_gid == gid and st.st_mode & 0o010)):
        log.warning("the client-file group (gid %d) cannot reach %s (mode %o, group %d): chgrp "
                    "and chmod g+rx it to let the group use the service", gid, directory,
                    stat.S_IMODE(st.st_mode), st.st_gid)


# -- processes ---------------------------------------------------------------------------------

START_TOLERANCE_TICKS = 5 * (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


def process_start(pid: int) -> Optional[int]:
    """The start time of process `pid` (clock ticks since boot, from /proc), None if unknown."""
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
    """False when the entry's process is gone (or its pid now belongs to a younger process)."""
    pid = entry.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True  # an entry without a pid (written by hand): take it at its word
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    started = entry.get("started")
    if not isinstance(started, int):
        return True
    now = process_start(pid)
    # Close, not equal: under qemu-user emulation a process reads its own /proc stat from qemu,
    # which reports qemu's start a few ticks after the kernel's (seen: 2 ticks). A pid reused by
    # another process within seconds of the first one's start is not a practical case.
    return now is None or abs(now - started) <= START_TOLERANCE_TICKS


# -- reading -----------------------------------------------------------------------------------

def read_file(path: str, kind: str, max_bytes: int = MAX_FILE_BYTES, private: bool = False) -> bytes:
    """The bytes of `path` read as :func:`connector.files.read_regular` does (no link, a regular
    file, at most `max_bytes`; with `private` writable only by its owner); ValueError otherwise."""
    return read_regular(path, max_bytes, kind, private)


def _read_json(path: str, kind: str) -> Any:
    """The JSON in `path` (see read_file); ValueError when it is not UTF-8 JSON too."""
    return json.loads(read_file(path, kind).decode("utf-8"))


def refuse_unsafe(path: str, kind: str = "client file") -> None:
    """ValueError (one line, with the fix) when `path` fails the SDK's safety rule: whoever could
    replace it would receive the tokens sent to the port it names."""
    reason = unsafe_reason(path)
    if reason:
        raise ValueError("refusing the {} {}: {}, so another user could have replaced it (make it "
                         "and its directories writable only by their owner, or set {} to a file in "
                         "a directory only you can write)".format(kind, path, reason, ENV_CLIENT_FILE))


def _load(path: str) -> Dict[str, Any]:
    document = _read_json(path, "client file")
    if not isinstance(document, dict):
        raise ValueError("{} is not a greengrass-ml client file".format(path))
    if "services" not in document and {"port", "token"} <= set(document):
        return {"version": FORMAT_VERSION, "services": {DEFAULT_NAME: document}}  # version 1
    if not isinstance(document.get("services"), dict):
        raise ValueError("{} is not a greengrass-ml client file (no services)".format(path))
    return document


def entries(path: str) -> Dict[str, Dict[str, Any]]:
    """Every entry of the client file, live or stale, by name."""
    return {str(k): v for k, v in _load(path)["services"].items()
            if isinstance(v, dict) and {"port", "token"} <= set(v)}


def read(path: str, name: Optional[str] = None) -> Dict[str, Any]:
    """The entry of host `name` (else the only live one); OSError/ValueError when there is none,
    or when the file fails the safety rule (:func:`refuse_unsafe`) or the entry's address."""
    refuse_unsafe(path)
    return _checked_entry(path, _chosen(path, name))


def _checked_entry(path: str, entry: Dict[str, Any]) -> Dict[str, Any]:
    port = entry.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError("the client file {} gives {} the port {!r}, not a port number".format(
            path, entry.get("name"), port))
    return entry


def _chosen(path: str, name: Optional[str]) -> Dict[str, Any]:
    found = entries(path)
    live = {k: v for k, v in found.items() if is_alive(v)}
    if name is not None and name in found:
        if name not in live:
            raise ValueError("the client file {} names {} on port {}, but its process {} is gone "
                             "(a stale entry)".format(path, name, found[name].get("port"),
                                                      found[name].get("pid")))
        return dict(found[name], name=name)
    if len(live) == 1:
        only = next(iter(live))
        return dict(live[only], name=only)
    if not live:
        raise ValueError("the client file {} has no entry of a running host{}".format(
            path, " ({} stale)".format(", ".join(sorted(found))) if found else ""))
    raise ValueError("the client file {} lists several hosts ({}); name the one to use".format(
        path, ", ".join(sorted(live))))


def function_token(path: str, function_arn: str) -> Optional[str]:
    """The token a running host gave `function_arn`, from the function-token file; ValueError
    when that file fails the safety rule (:func:`refuse_unsafe`) or is not one."""
    refuse_unsafe(path + FUNCTIONS_SUFFIX, "function-token file")
    try:
        document = _load_functions(path + FUNCTIONS_SUFFIX)
    except FileNotFoundError:
        return None
    entry = document["functions"].get(function_arn)
    if not isinstance(entry, dict) or not is_alive(entry):
        return None
    token = entry.get("token")
    return token if isinstance(token, str) and token else None


# -- writing -----------------------------------------------------------------------------------

def publish(path: str, name: str, host: str, port: int, token: str, region: str,
            timeout_s: Optional[float] = None, group: Optional[str] = None,
            fast: Optional[Callable[[], Optional[Dict[str, Any]]]] = None) -> Dict[str, Any]:
    """Write (or take over a stale) entry `name`; ClientFileError when a live host holds it.

    `fast` is called under the file's lock once the entry is known to be ours to write (so a live
    host's fast-path socket is never replaced); what it returns is the entry's ``"fast"``."""
    check_directory(path, group)
    entry = {"host": host, "port": int(port), "token": token, "region": region, "pid": os.getpid(),
             "started": process_start(os.getpid())}
    if timeout_s is not None:
        entry["timeout_s"] = float(timeout_s)
    gid = group_id(group) if group else None
    with _locked(path):
        document = _load_for_update(path)
        current = document["services"].get(name)
        if (isinstance(current, dict) and current.get("token") != token and is_alive(current)
                and current.get("pid") != os.getpid()):
            raise ClientFileError(
                "another host named {!r} (pid {}, port {}) is running and owns its entry in the "
                "client file {}; stop it first, or give this service another name".format(
                    name, current.get("pid"), current.get("port"), path))
        offered = fast() if fast is not None else None
        if offered:
            entry["fast"] = offered
        if gid is not None:
            entry["group"] = gid
        document["services"][name] = entry
        _write_client_file(path, document)
    return entry


def withdraw(path: str, name: str, token: str) -> bool:
    """Remove entry `name` if it is still ours (holds `token`), and our function tokens."""
    try:
        with _locked(path):
            removed = False
            try:
                document = _load(path)
            except (OSError, ValueError):
                document = None
            if document is not None:
                current = document["services"].get(name)
                if isinstance(current, dict) and current.get("token") == token:
                    del document["services"][name]
                    removed = True
                    if document["services"]:
                        _write_client_file(path, document)
                    else:
                        os.unlink(path)
            _withdraw_functions(path + FUNCTIONS_SUFFIX, name)
            return removed
    except OSError as exc:
        log.warning("could not remove our entry from the client file %s: %s", path, exc)
        return False


def publish_function_tokens(path: str, name: str, tokens: Mapping[str, str]) -> None:
    """Record the tokens of host `name`'s functions in ``<path>.functions`` (always 0600)."""
    functions_path = path + FUNCTIONS_SUFFIX
    with _locked(path):
        try:
            document = _load_functions(functions_path)
        except (OSError, ValueError):
            document = {"version": FORMAT_VERSION, "functions": {}}
        pid = os.getpid()
        started = process_start(pid)
        for arn, token in tokens.items():
            document["functions"][arn] = {"token": token, "host": name, "pid": pid,
                                          "started": started}
        _atomic_write(functions_path, document, 0o600, None)


# -- internals ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    directory, base = os.path.split(os.path.abspath(path))
    fd = os.open(os.path.join(directory, "." + base + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load_for_update(path: str) -> Dict[str, Any]:
    try:
        return _load(path)
    except FileNotFoundError:
        return {"version": FORMAT_VERSION, "services": {}}
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        # Only this user can write the directory (checked), so this is our own leftover.
        log.warning("replacing the unreadable client file %s: %s", path, exc)
        return {"version": FORMAT_VERSION, "services": {}}


def _load_functions(path: str) -> Dict[str, Any]:
    document = _read_json(path, "function-token file")
    if not isinstance(document, dict) or not isinstance(document.get("functions"), dict):
        raise ValueError("{} is not a function-token file".format(path))
    return document


def _withdraw_functions(path: str, name: str) -> None:
    try:
        document = _load_functions(path)
    except (OSError, ValueError):
        return
    kept = {arn: e for arn, e in document["functions"].items()
            if not (isinstance(e, dict) and e.get("host") == name and e.get("pid") == os.getpid())}
    if kept:
        _atomic_write(path, {"version": FORMAT_VERSION, "functions": kept}, 0o600, None)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _shared_group(document: Dict[str, Any]) -> Optional[int]:
    """The group the client file is readable by: the one the services in it asked for (the
    latest entry's, when they asked for different ones), else none. Kept per entry, so that one
    service stopping or starting without --client-file-group does not shut another's group out."""
    groups = [e["group"] for e in document["services"].values()
              if isinstance(e, dict) and isinstance(e.get("group"), int) and not isinstance(e.get("group"), bool)]
    if len(set(groups)) > 1:
        log.warning("the services in one client file ask for different groups (%s); the file can "
                    "have one: gid %d", ", ".join(str(g) for g in groups), groups[-1])
    return groups[-1] if groups else None


def _write_client_file(path: str, document: Dict[str, Any]) -> None:
    gid = _shared_group(document)
    _atomic_write(path, document, 0o640 if gid is not None else 0o600, gid)


def _atomic_write(path: str, document: Dict[str, Any], mode: int, gid: Optional[int]) -> None:
    # The temporary file is 0600 until renamed: a token is never readable by others, not even for
    # the instant between create and chmod.
    write_atomic(path, json.dumps(document).encode("utf-8"), mode & 0o640, gid)


def group_id(group: str) -> int:
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ClientFileError("client-file group {!r} does not exist".format(group)) from None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EACCES:
        return "permission denied"
    return exc.strerror or str(exc)
