"""The fast path's Unix socket: where it lives, how it is made private, replaced and removed.

It lives beside the client file, in the directory :func:`connector.ipc.clientfile.check_directory`
has found safe (owned by this user or root, writable by nobody else), named after the client file
and the host's entry: ``<client file>.<entry name>.sock`` (a name that is not a plain word is
hashed, so it never becomes a path). Whoever can connect to it still needs a token; the socket is
as private as the client file besides: 0600, or 0660 for the client-file group.

Making it: bound under a fresh random name in that directory, given its mode (and group) there,
then renamed over the final name. So nobody can connect in the instant between bind and chmod, and
a stale socket a dead host of ours left is replaced atomically. It is made while the client file's
lock is held and after no live host was found to own the entry, so a live host's socket is never
replaced. What already lies at the final name and is not a socket of this user's (a symbolic
link, a file, a directory, another user's socket) is left alone: the host then offers no fast
path and says why (callers use the V1 exchange). Nothing here ever follows a link: bind and
rename never do, and lstat/chmod/unlink work on names inside the opened directory.

A path longer than a Unix socket address holds (108 bytes) is bound and reached through
``/proc/self/fd/<directory fd>/<name>``.
"""
from __future__ import annotations

import binascii
import errno
import hashlib
import logging
import os
import re
import socket
import stat
from typing import NamedTuple, Optional, Tuple

from ...files import OPERATOR_DIRECTORY_FLAGS

log = logging.getLogger(__name__)

SUFFIX = ".sock"
# sockaddr_un.sun_path: 108 bytes on Linux, the terminating NUL included.
MAX_ADDRESS_BYTES = 107
BACKLOG = 128
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Bound(NamedTuple):
    """A listening socket at `path`, and the file's identity (to remove only our own)."""
    listener: socket.socket
    path: str
    identity: Tuple[int, int]


def path_for(client_file: str, name: str) -> str:
    """Where the fast socket of host entry `name` lives, beside `client_file`."""
    client_file = os.path.abspath(client_file)
    word = name if _PLAIN_NAME.fullmatch(name) else hashlib.sha256(
        name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return "{}.{}{}".format(client_file, word, SUFFIX)


def address(directory_fd: int, directory: str, leaf: str) -> str:
    """The address to bind or connect to `leaf` in `directory` (open as `directory_fd`)."""
    full = os.path.join(directory, leaf)
    if len(os.fsencode(full)) <= MAX_ADDRESS_BYTES:
        return full
    return "/proc/self/fd/{}/{}".format(directory_fd, leaf)


def bind(path: str, mode: int, gid: Optional[int]) -> Tuple[Optional[Bound], str]:
    """Listen at `path` (see the module docstring): (Bound, "") or (None, why the fast path is off)."""
    directory, leaf = os.path.split(path)
    try:
        directory_fd = os.open(directory, OPERATOR_DIRECTORY_FLAGS)
    except OSError as exc:
        return None, "cannot open {}: {}".format(directory, exc.strerror)
    try:
        why = _occupied(directory_fd, path, leaf)
        if why:
            return None, why
        return _bind_in(directory_fd, directory, leaf, mode, gid), ""
    except OSError as exc:
        return None, "cannot make the socket {}: {}".format(path, exc.strerror or exc)
    finally:
        os.close(directory_fd)


def _occupied(directory_fd: int, path: str, leaf: str) -> str:
    """Why what lies at `leaf` may not be replaced ("" when nothing does, or our stale socket)."""
    try:
        st = os.lstat(leaf, dir_fd=directory_fd)
    except FileNotFoundError:
        return ""
    if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.geteuid():
        return ""  # a dead host's of ours: the entry's liveness was checked under the lock
    kind = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
            else "a socket of uid {}".format(st.st_uid) if stat.S_ISSOCK(st.st_mode)
            else "a file")
    return "{} is {}, not a socket this user made; it is left alone (remove it to offer the fast " \
           "path)".format(path, kind)


def _bind_in(directory_fd: int, directory: str, leaf: str, mode: int, gid: Optional[int]) -> Bound:
    temporary = ".tmp-{}{}".format(binascii.hexlify(os.urandom(8)).decode("ascii"), SUFFIX)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address(directory_fd, directory, temporary))
        try:
            if gid is not None:
                os.chown(temporary, -1, gid, dir_fd=directory_fd, follow_symlinks=False)
            os.chmod(temporary, mode, dir_fd=directory_fd)
            os.rename(temporary, leaf, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
        except OSError:
            _unlink_quietly(directory_fd, temporary)
            raise
        listener.listen(BACKLOG)
        st = os.lstat(leaf, dir_fd=directory_fd)
        return Bound(listener, os.path.join(directory, leaf), (st.st_dev, st.st_ino))
    except BaseException:
        listener.close()
        raise


def remove(bound: Bound) -> None:
    """Close the listener and unlink its file if it is still ours (never another's)."""
    bound.listener.close()
    try:
        st = os.lstat(bound.path)
        if (st.st_dev, st.st_ino) == bound.identity:
            os.unlink(bound.path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("could not remove the fast-path socket %s: %s", bound.path, exc.strerror)


def _unlink_quietly(directory_fd: int, leaf: str) -> None:
    try:
        os.unlink(leaf, dir_fd=directory_fd)
    except OSError:
        pass
