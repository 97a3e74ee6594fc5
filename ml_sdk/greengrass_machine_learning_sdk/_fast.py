"""The fast path to our own standalone host: one frame each way on its private Unix socket.

The host offers it in its client-file entry (``"fast": {"unix": <path>, "protocol": 1}``); a
Greengrass core, or an older host, offers nothing, and the V1 exchange is used with no error. A
call is then one request frame and one answer frame on a connection kept per thread and per
process (never shared across fork), instead of two HTTP requests. The answer carries what the
V1 exchange's two answers would (status, reason, errorType, function error, Retry-After, payload),
so :mod:`._service` turns it into the same outcome, exception and message.

A fast attempt that fails before anything could have run (no socket there, refused, not the
host's socket, a version the host does not speak) raises :class:`Unavailable`: the caller falls
back to the V1 exchange and this process does not try the fast path again. ``GG_ML_IPC_FAST=0``
turns it off. The frame codec is a copy of ``connector/ipc/fast/frames.py`` (this SDK must not
import ``connector``); ``tests/ipc/test_fast_path.py`` checks that the two agree byte for byte.
"""
from __future__ import annotations

import collections
import os
import re
import socket
import stat
import struct
from typing import Mapping, Optional, Sequence, Tuple

ENV_FAST = "GG_ML_IPC_FAST"
PROTOCOL = 1

REQUEST_MAGIC = b"GGFP"
ANSWER_MAGIC = b"GGFA"
OP_INVOKE = 1
REQUEST_HEADER = struct.Struct("!4sBBHHII")
ANSWER_HEADER = struct.Struct("!4sBBBHBBBBI")
FLAG_CLOSING = 1
CALL_FRAME = 0
CALL_POST_WORK = 1
CALL_GET_WORK_RESULT = 2
MAX_TOKEN_BYTES = 4096
MAX_ARN_BYTES = 4096
# The longest client context the V1 exchange carries: http.server reads header lines of at most
# 65536 bytes, "X-Amz-Client-Context: " and CRLF included. A longer one goes the V1 way, so that
# its caller gets the V1 exchange's own answer (431), not another one.
MAX_V1_CONTEXT_CHARS = 65536 - len("X-Amz-Client-Context: \r\n")
MAX_ADDRESS_BYTES = 107  # sockaddr_un.sun_path, less its NUL
_TOKEN = re.compile(r"[!-~]{1,%d}" % MAX_TOKEN_BYTES)

# Where the fast socket is and who must own it (the client file's owner).
FastSocket = collections.namedtuple("FastSocket", ["path", "owner"])
Answer = collections.namedtuple("Answer", ["call", "flags", "status", "reason", "error_type",
                                           "function_error", "retry_after", "payload"])


class Unavailable(Exception):
    """The fast path cannot be used from here; nothing was sent that could have run."""


class Closed(Exception):
    """The connection ended before a whole answer arrived."""

    def __init__(self, message: str, got_any: bool) -> None:
        super().__init__(message)
        self.got_any = got_any


_failed_in = None  # type: Optional[int]  # the pid whose fast attempt failed


def wanted(environ: Optional[Mapping[str, str]] = None) -> bool:
    """False when ``GG_ML_IPC_FAST=0`` or this process's fast attempt already failed."""
    env = os.environ if environ is None else environ
    return _failed_in != os.getpid() and env.get(ENV_FAST, "").strip() != "0"


def give_up() -> None:
    """This process uses the V1 exchange from now on (a fork tries again: another process)."""
    global _failed_in
    _failed_in = os.getpid()


def offered(entry: Mapping[str, object], client_file: str) -> Optional[FastSocket]:
    """The fast socket a client-file entry offers, if it is one we speak and it lies beside the
    client file (whose directory passed the safety rule); else None."""
    fast = entry.get("fast")
    if not isinstance(fast, dict) or fast.get("protocol") != PROTOCOL:
        return None
    path = fast.get("unix")
    client_file = os.path.abspath(client_file)
    if not isinstance(path, str) or os.path.dirname(path) != os.path.dirname(client_file):
        return None
    try:
        owner = os.lstat(client_file).st_uid
    except OSError:
        return None
    return FastSocket(path, owner)


def eligible(token: str, address: str, context: str) -> bool:
    """Whether this call's fields are ones the V1 exchange would carry as they are, so both paths
    answer it the same (anything else goes the V1 way, and gets the V1 exchange's answer)."""
    if not _TOKEN.fullmatch(token) or len(context) > MAX_V1_CONTEXT_CHARS:
        return False
    try:
        return len(address.encode("utf-8")) <= MAX_ARN_BYTES
    except UnicodeEncodeError:
        return False


def request_parts(token: str, address: str, context: str, payload: bytes) -> Tuple[bytes, bytes]:
    """A request frame as (header and fields, payload): sent gathered, the payload not copied."""
    arn, ctx, tok = address.encode("utf-8"), context.encode("ascii"), token.encode("ascii")
    return (b"".join((REQUEST_HEADER.pack(REQUEST_MAGIC, PROTOCOL, OP_INVOKE, len(tok), len(arn),
                                          len(ctx), len(payload)), tok, arn, ctx)), payload)


def request(token: str, address: str, context: str, payload: bytes) -> bytes:
    return b"".join(request_parts(token, address, context, payload))


def connect(fast: FastSocket, timeout: float) -> socket.socket:
    """A connection to the host's socket; Unavailable when there is none to use."""
    try:
        st = os.lstat(fast.path)
    except OSError as exc:
        raise Unavailable("{}: {}".format(fast.path, exc.strerror))
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != fast.owner:
        raise Unavailable("{} is not the host's socket (not a socket of uid {})".format(
            fast.path, fast.owner))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    directory_fd = None
    try:
        target = fast.path
        if len(os.fsencode(target)) > MAX_ADDRESS_BYTES:  # reached through the directory
            directory, leaf = os.path.split(target)
            directory_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            target = "/proc/self/fd/{}/{}".format(directory_fd, leaf)
        sock.connect(target)
    except OSError as exc:
        sock.close()
        raise Unavailable("cannot connect to {}: {}".format(fast.path, exc.strerror or exc))
    finally:
        if directory_fd is not None:
            os.close(directory_fd)
    return sock


def exchange(sock: socket.socket, frame: Sequence[bytes]) -> Answer:
    """Send the parts of `frame`, read the answer. A host that refuses a frame before reading
    all of it answers and closes: its answer is still read after the send failed."""
    try:
        _send(sock, frame)
    except (BrokenPipeError, ConnectionResetError):
        pass  # read what the host answered before it closed (Closed if nothing)
    head = _receive(sock, ANSWER_HEADER.size, False)
    magic, version, call, flags, status, *lengths, payload_length = ANSWER_HEADER.unpack(head)
    if magic != ANSWER_MAGIC or version != PROTOCOL:
        raise Unavailable("the socket answered something that is not a version {} fast-path "
                          "answer".format(PROTOCOL))
    rest = _receive(sock, sum(lengths) + payload_length, True)
    texts, at = [], 0
    for length in lengths:
        texts.append(rest[at:at + length].decode("ascii", "replace"))
        at += length
    return Answer(call, flags, status, texts[0], texts[1], texts[2], texts[3], rest[at:])


def _send(sock: socket.socket, parts: Sequence[bytes]) -> None:
    views = [memoryview(part) for part in parts if part]
    while views:
        sent = sock.sendmsg(views)
        while sent:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0], sent = views[0][sent:], 0


def _receive(sock: socket.socket, size: int, got_any: bool) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    at = 0
    while at < size:
        try:
            count = sock.recv_into(view[at:])
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise Closed(str(exc), got_any or at > 0)
        if not count:
            raise Closed("the connection closed before the whole answer", got_any or at > 0)
        at += count
    return bytes(buffer)
