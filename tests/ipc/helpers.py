"""What the IPC tests share: watching a connection the host should close, the nesting depth of a
decoded JSON document (the host's limit is on the text; these models judge the document), and the
fuzz tests' model of how the host decodes a client context (the same on both paths)."""
from __future__ import annotations

import base64
import json
import socket
import time
from typing import Any, Optional


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


def expected_custom(context: str) -> Optional[dict]:
    """custom of a base64 client context as the host decodes it; None when it refuses it (too
    long, not base64 of a JSON object, nested deeper than 32)."""
    if not context:
        return {}
    if len(context) > 64 * 1024:
        return None
    try:
        document = json.loads(base64.b64decode(context.encode("ascii"), validate=True).decode("utf-8"))
    except (ValueError, UnicodeError, RecursionError):
        return None
    if not isinstance(document, dict) or json_depth(document) > 32:
        return None
    custom = document.get("custom")
    return custom if isinstance(custom, dict) else {}
