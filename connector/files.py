"""Files that someone else may have touched: the rules every reader and writer of the runtime keeps.

* :func:`unsafe_reason` - OpenSSH's rule (``safe_path`` in auth.c): a file, its directory and every
  directory above must be owned by root or by the file's owner and writable by nobody else; only a
  directory *above* the file's own may be writable by others if it is sticky (``/tmp``). A file
  that fails it could have been replaced by another user.
* :func:`directory_reason` - the same rule for a directory this user is to create files in.
* :func:`read_regular` - read a regular file only (a planted FIFO neither hangs nor is read:
  O_NONBLOCK, then fstat), at most a cap of bytes, without following a symbolic link (O_NOFOLLOW)
  unless the caller says the path is the operator's own (``follow_links``: a Kubernetes ConfigMap
  mounts every key as a link into ``..data/``, and a ``--config`` naming one must keep working).
* :func:`code_directory_reason` - :func:`directory_reason` for a directory whose code this process
  runs (a site-packages: ``site.addsitedir`` executes its ``*.pth`` files), and for those files.
* :func:`write_at` / :func:`write_atomic` - write to a fresh temporary name (O_CREAT|O_EXCL|
  O_NOFOLLOW with a random suffix: nothing planted is followed or reused), fsync, set the mode
  (and group), rename into place (a rename replaces a link, never follows it), fsync the directory.
"""
from __future__ import annotations

import binascii
import contextlib
import errno
import os
import stat
from typing import Optional

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a planted FIFO must not hang the reader; it is refused by fstat instead.
_READ_FLAGS = os.O_RDONLY | _CLOEXEC | getattr(os, "O_NONBLOCK", 0)
# A directory opened to work inside it (os.open(..., dir_fd=)), never through a link; the one an
# operator named may be reached through a link of the operator's (OPERATOR_DIRECTORY_FLAGS).
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | _CLOEXEC
OPERATOR_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC
TMP_PREFIX = ".tmp-"


class UnsafeFile(ValueError):
    """A file to read is a symbolic link, not a regular file, too large, or writable by others.
    `problem` is what it is, without the path ("larger than 65536 bytes"), for callers that word
    their own message."""

    def __init__(self, message: str, problem: str = "") -> None:
        super().__init__(message)
        self.problem = problem or message


def _unsafe(path: str, problem: str, rule: str) -> UnsafeFile:
    return UnsafeFile("{} is {}; {}".format(path, problem, rule), problem)


def unsafe_reason(path: str) -> Optional[str]:
    """Why the file at `path` (or, when it does not exist, its directory) could have been replaced
    by another unprivileged user; None when it could not.

    The directories are judged where they really are (a link among them is resolved first). A
    file that belongs to neither root nor this user (the service's own user, say) is trusted only
    where no directory above it lets others create entries, sticky or not: under ``/tmp`` any user
    could have made the directory and the file first."""
    path = os.path.abspath(path)
    path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    try:
        st: Optional[os.stat_result] = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        return "{} cannot be examined ({})".format(path, exc.strerror)
    owner = None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            return "{} is a symbolic link".format(path)
        owner = st.st_uid
        if st.st_mode & 0o022:
            return "{} is writable by {} (mode {:o})".format(path, _who(st.st_mode), stat.S_IMODE(st.st_mode))
    directory, leaf = os.path.dirname(path), True
    while True:
        try:
            dst = os.stat(directory)
        except OSError as exc:
            return "{} cannot be examined ({})".format(directory, exc.strerror)
        owner = dst.st_uid if owner is None else owner
        if dst.st_uid not in (0, owner):
            return "{} belongs to uid {}, not to root or the file's owner (uid {})".format(
                directory, dst.st_uid, owner)
        sticky = bool(dst.st_mode & stat.S_ISVTX)
        if dst.st_mode & 0o022 and (leaf or not sticky):
            return "{} is writable by {} (mode {:o})".format(directory, _who(dst.st_mode),
                                                             stat.S_IMODE(dst.st_mode))
        if dst.st_mode & 0o022 and owner not in (0, os.geteuid()):
            return ("{} belongs to uid {}, neither root nor this user (uid {}), under {}, where any "
                    "user may create entries (mode {:o}): another user could have made it first"
                    .format(path, owner, os.geteuid(), directory, stat.S_IMODE(dst.st_mode)))
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory, leaf = parent, False


def directory_reason(directory: str) -> Optional[str]:
    """Why a file this user creates in `directory` could be replaced by another unprivileged user
    (None: it could not)."""
    st = os.stat(directory)
    if st.st_uid not in (0, os.geteuid()):
        return "{} belongs to uid {}, not to this user (uid {})".format(directory, st.st_uid, os.geteuid())
    return unsafe_reason(os.path.join(directory, ".probe-that-does-not-exist"))


def code_directory_reason(directory: str) -> Optional[str]:
    """Why code in `directory` could have been written by another unprivileged user (None: it
    could not): the directory fails :func:`directory_reason`, or one of its ``*.pth`` files (which
    ``site.addsitedir`` executes) is, or links to, a file that is not owned by root or this user
    or fails :func:`unsafe_reason`."""
    reason = directory_reason(directory)
    if reason:
        return reason
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        return "{} cannot be listed ({})".format(directory, exc.strerror)
    for name in names:
        if not name.endswith(".pth"):
            continue
        path = os.path.realpath(os.path.join(directory, name))
        try:
            owner = os.stat(path).st_uid
        except OSError as exc:
            return "{} cannot be examined ({})".format(path, exc.strerror)
        if owner not in (0, os.geteuid()):
            return "{} belongs to uid {}, not to root or this user (uid {})".format(
                path, owner, os.geteuid())
        reason = unsafe_reason(path)
        if reason:
            return reason
    return None


def _who(mode: int) -> str:
    return "others" if mode & 0o002 else "its group"


def read_regular(path: str, limit: int, kind: str = "file", private: bool = False,
                 follow_links: bool = False) -> bytes:
    """The bytes of the regular file `path`; UnsafeFile naming `kind` and the rule for a symbolic
    link (unless `follow_links`), a non-regular file, one over `limit` bytes (whoever could write
    there may have planted it) and, with `private`, one its group or others may write; OSError
    when it cannot be read (ValueError for a NUL byte in `path`)."""
    try:
        fd = os.open(path, _READ_FLAGS | (0 if follow_links else _NOFOLLOW))
    except OSError as exc:
        if not follow_links and (exc.errno == errno.ELOOP or os.path.islink(path)):
            raise _unsafe(path, "a symbolic link", "a {} must not be one".format(kind)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # checked before fdopen, which refuses a directory itself
            raise _unsafe(path, "not a regular file ({})".format(_what(st.st_mode)),
                          "not a {}".format(kind))
        if private and st.st_mode & 0o022:
            raise _unsafe(path, "writable by {} (mode {:o})".format(
                _who(st.st_mode), stat.S_IMODE(st.st_mode)),
                "a {} must be writable only by its owner".format(kind))
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1) if st.st_size <= limit else b""
    if st.st_size > limit or len(data) > limit:
        raise _unsafe(path, "larger than {} bytes".format(limit), "not a {}".format(kind))
    return data


def _what(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "mode {:o}".format(stat.S_IFMT(mode))


def write_at(dir_fd: int, name: str, data: bytes, mode: int = 0o600, gid: Optional[int] = None) -> None:
    """`data` as `name` in the directory `dir_fd` (see the module docstring)."""
    tmp = "{}{}.{}".format(TMP_PREFIX, name, binascii.hexlify(os.urandom(6)).decode("ascii"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if gid is not None:
                os.fchown(handle.fileno(), -1, gid)
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def write_atomic(path: str, data: bytes, mode: int = 0o600, gid: Optional[int] = None) -> None:
    """`data` as the file `path` (see the module docstring)."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), OPERATOR_DIRECTORY_FLAGS)
    try:
        write_at(fd, os.path.basename(path), data, mode, gid)
    finally:
        os.close(fd)
