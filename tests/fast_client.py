"""A raw client of the host's fast path for the tests: frames built and read byte by byte, so that
odd ones can be sent too (connector.ipc.fast.frames builds them; nothing of the SDK is used)."""
from __future__ import annotations

import base64
import json
import socket
from typing import Optional

from connector.ipc.fast import frames

CONTEXT = base64.b64encode(json.dumps({"custom": {"Content-Type": "image/jpeg"}}).encode())


class FastConnection(object):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)

    def invoke(self, token: str, arn: str, payload: bytes = b"x", context: bytes = CONTEXT,
               **odd) -> frames.Answer:
        return self.exchange(frames.request(token.encode(), arn.encode(), context, payload, **odd))

    def exchange(self, frame: bytes) -> frames.Answer:
        try:
            self.sock.sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the host answered and closed before reading all of it: read the answer
        return self.answer()

    def answer(self) -> frames.Answer:
        head = self.read(frames.ANSWER_HEADER.size)
        fields = frames.ANSWER_HEADER.unpack(head)
        return frames.parse_answer(head + self.read(sum(fields[5:9]) + fields[9]))

    def read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed after {} of {} bytes".format(len(data), size))
            data += chunk
        return data

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the host closed the connection (nothing more arrives, EOF) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "FastConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def error_of(answer: frames.Answer) -> Optional[dict]:
    """The JSON error body of a refusal."""
    return json.loads(answer.payload) if answer.status != 200 else None
