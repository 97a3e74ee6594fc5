"""What the IPC tests share: watching a connection the host should close, and the nesting depth of
a decoded JSON document (the host's limit is on the text; these models judge the document)."""
from __future__ import annotations

import socket
import time
from typing import Any


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float:
    """Seconds until the host closes `sock` (trickling a byte every 0.3 s meanwhile)."""
    started = time.monotonic()
    sock.settimeout(0.3)
    while time.monotonic() - started < seconds:
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - started
    raise AssertionError("still open after {} s".format(seconds))


def json_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((json_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((json_depth(v) for v in value), default=0)
    return 0
