"""Connection bounds: a cap on open connections, deadlines per request phase, and a budget for
request bodies being read.

A thread serves each connection (``http.server``), so what bounds threads, file descriptors and
memory is the number of connections and how long each may hold them without progress:

* **cap** (``max_connections``, at most what ``RLIMIT_NOFILE`` leaves after a reserve): a new
  connection beyond it evicts a connection that is draining the body of a request already refused
  (its answer is sent), else the oldest one waiting for a request (a slow or idle client: it has
  cost nothing yet); when none drains or waits, the new one is answered ``503`` at once. So a
  peer with no token, whose requests are refused before their bodies are read, cannot hold the
  slots by trickling bodies.
* **deadlines**: the request head (request line and headers) must arrive within
  ``head_timeout_s`` of the first wait on a fresh connection (``idle_timeout_s`` on a kept-alive
  one), the body within ``body_timeout_s`` of the head. A whole deadline, not an idle timer, so a
  client sending a byte now and then gains nothing. Checked by the server loop every 0.1 s.
* **body budget** (``max_reading_bytes``, 64 MiB): bodies are read in chunks of
  ``BODY_CHUNK_BYTES`` and each chunk is charged to the budget before it is read, so a body holds
  what has arrived (plus the one chunk being read), never what it declared: an upload that
  declares 16 MiB and stalls holds 64 KiB. Bodies that declared more than ``small_body_bytes``
  (1 MiB) may hold together only the budget less ``small_reserve_bytes`` (a quarter: 48 of 64
  MiB), so uploads that send fast and then stall cannot starve small calls (an image is a few
  hundred KB). A chunk that does not fit is refused with ``429`` at once. The body deadline and
  the connection cap bound how long and how many; the budget stays the ceiling on memory.
"""
from __future__ import annotations

import io
import resource
import socket
import threading
import time
from typing import Dict, Optional

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_HEAD_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_MAX_READING_BYTES = 64 * 1024 * 1024
# Bodies up to this size (declared) may use the reserve; larger ones share the rest of the budget.
DEFAULT_SMALL_BODY_BYTES = 1024 * 1024
# A body is read, and charged to the budget, this much at a time.
BODY_CHUNK_BYTES = 64 * 1024
# Descriptors kept free for everything else (worker sockets, model and log files, the listener).
FD_RESERVE = 64

WAITING = "waiting"    # for a request head
READING = "reading"    # a request body
HANDLING = "handling"  # the request is being handled (a long poll may take its time)
DRAINING = "draining"  # the body of a request already answered is read and dropped

BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s")
BUSY_TYPE = "ServiceUnavailable"


def busy_message(max_connections: int) -> str:
    """What a connection refused at the cap is told (on every transport that shares the guard)."""
    return "the IPC host is busy: {} connections are open and none is idle; retry later".format(
        max_connections)


def connection_cap(requested: int) -> int:
    """`requested`, lowered so that the process never runs out of file descriptors."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return requested
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(4, min(requested, soft - FD_RESERVE))


class _Entry(object):
    __slots__ = ("phase", "since", "deadline", "fresh")

    def __init__(self, now: float, deadline: float) -> None:
        self.phase, self.since, self.deadline, self.fresh = WAITING, now, deadline, True


class ConnectionGuard(object):
    def __init__(self, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S,
                 idle_timeout_s: float = 60.0, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
                 max_reading_bytes: int = DEFAULT_MAX_READING_BYTES, largest_body_bytes: int = 0,
                 small_body_bytes: int = DEFAULT_SMALL_BODY_BYTES,
                 small_reserve_bytes: Optional[int] = None) -> None:
        """`largest_body_bytes`: the largest body the host accepts; the budget grows to hold it
        beside the reserve, or such a body would be refused as busy forever. The reserve is a
        quarter of `max_reading_bytes` unless given."""
        self.max_connections = connection_cap(int(max_connections))
        self.head_timeout_s = float(head_timeout_s)
        self.idle_timeout_s = float(idle_timeout_s)
        self.body_timeout_s = float(body_timeout_s)
        reserve = int(max_reading_bytes) // 4 if small_reserve_bytes is None else int(small_reserve_bytes)
        self.max_reading_bytes = max(int(max_reading_bytes), int(largest_body_bytes) + reserve)
        self.large_reading_bytes = self.max_reading_bytes - reserve
        self.small_body_bytes = int(small_body_bytes)
        self._lock = threading.Lock()
        self._entries: Dict[socket.socket, _Entry] = {}
        self._reading_bytes = 0
        self.counters = {"evicted": 0, "refused_busy": 0, "head_timeouts": 0, "body_timeouts": 0}

    # -- admission ------------------------------------------------------------------------------

    def admit(self, connection: socket.socket) -> bool:
        """Track a new connection; False when it must be refused (full of busy connections)."""
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= self.max_connections:
                victim = self._eviction_candidate()
                if victim is None:
                    self.counters["refused_busy"] += 1
                    return False
                self._entries.pop(victim)
                self.counters["evicted"] += 1
                _hang_up(victim)
            self._entries[connection] = _Entry(now, now + self.head_timeout_s)
            return True

    def release(self, connection: socket.socket) -> None:
        with self._lock:
            self._entries.pop(connection, None)

    def describe(self) -> Dict[str, int]:
        """The health document's ``connections`` section: open now, the bytes of bodies being
        read (charged to the budget), and what the bounds did."""
        with self._lock:
            return dict(self.counters, open=len(self._entries), reading_bytes=self._reading_bytes)

    def open_connections(self) -> "list[socket.socket]":
        with self._lock:
            return list(self._entries)

    # -- phases (called by the connection's own thread) -------------------------------------------

    def waiting(self, connection: socket.socket) -> None:
        """The connection waits for a (further) request head."""
        self._enter(connection, WAITING, None)

    def reading(self, connection: socket.socket) -> None:
        self._enter(connection, READING, self.body_timeout_s)

    def handling(self, connection: socket.socket) -> None:
        self._enter(connection, HANDLING, None)

    def draining(self, connection: socket.socket, limit_s: float) -> None:
        """The connection's request was refused and answered; what is left of its body is being
        dropped for at most `limit_s`. Such a connection is the first to be evicted."""
        self._enter(connection, DRAINING, limit_s)

    def _enter(self, connection: socket.socket, phase: str, limit: Optional[float]) -> None:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(connection)
            if entry is None:
                return
            if phase == WAITING:
                limit = self.head_timeout_s if entry.fresh else self.idle_timeout_s
            elif phase == HANDLING:
                entry.fresh = False
            entry.phase, entry.since = phase, now
            entry.deadline = now + limit if limit is not None else float("inf")

    # -- the body budget ----------------------------------------------------------------------

    def charge(self, size: int, small: bool) -> bool:
        """Take `size` bytes of the budget for a body (`small`: declared at most
        small_body_bytes, so it may use the reserve); False when they do not fit."""
        with self._lock:
            limit = self.max_reading_bytes if small else self.large_reading_bytes
            if size and self._reading_bytes + size > limit:
                return False
            self._reading_bytes += size
            return True

    def uncharge(self, size: int) -> None:
        with self._lock:
            self._reading_bytes -= size

    def read_body(self, rfile: io.BufferedIOBase, length: int) -> Optional[bytes]:
        """Up to `length` bytes of a body from `rfile`, each chunk charged before it is read
        (fewer when the client stopped sending); None when a chunk did not fit the budget.
        Whatever was charged is given back on return: the body then counts in the work board."""
        small = length <= self.small_body_bytes
        # BytesIO grows as bytes arrive (a stalled 16 MiB upload allocates what it sent) and
        # getvalue() hands its buffer over without a second copy.
        body, received, charged = io.BytesIO(), 0, 0
        try:
            while received < length:
                want = min(BODY_CHUNK_BYTES, length - received)
                if not self.charge(want, small):
                    return None
                charged += want
                chunk = rfile.read1(want)
                self.uncharge(want - len(chunk))
                charged -= want - len(chunk)
                if not chunk:
                    break
                body.write(chunk)
                received += len(chunk)
        finally:
            self.uncharge(charged)
        return body.getvalue()

    # -- deadlines ----------------------------------------------------------------------------

    def enforce(self) -> None:
        """Hang up on every connection past its phase's deadline (its thread then ends)."""
        now = time.monotonic()
        late = []
        with self._lock:
            for connection, entry in list(self._entries.items()):
                if now >= entry.deadline:
                    late.append(connection)
                    self._entries.pop(connection)
                    self.counters["body_timeouts" if entry.phase in (READING, DRAINING) else "head_timeouts"] += 1
        for connection in late:
            _hang_up(connection)

    def hang_up_all(self) -> None:
        with self._lock:
            connections = list(self._entries)
        for connection in connections:
            _hang_up(connection)

    def _eviction_candidate(self) -> Optional[socket.socket]:
        """The connection to evict: one draining an answered request, else the oldest waiting."""
        for phase in (DRAINING, WAITING):
            idle = [(e.since, id(c), c) for c, e in self._entries.items() if e.phase == phase]
            if idle:
                return min(idle)[2]
        return None


def _hang_up(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
