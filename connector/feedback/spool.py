"""The durable on-disk queue of accepted feedback requests.

Every accepted request is one entry: ``<seq>-<id>.json`` (the record: config, prediction, metadata,
S3 key, delivery progress) and, for a kept sample, ``<seq>-<id>.bin`` (the model input). Both are
written to a temporary name, fsync'd and renamed, image first, so an entry exists exactly when its
record does; a crash leaves at most an orphan image or temporary file, removed at the next start.
Entries are delivered oldest first (the sequence number) and removed once delivered or failed.

Bounds (bytes, items, age) are checked when a request is added. When it would not fit, the policy
decides: ``reject-new`` refuses it (:class:`SpoolFull`), ``drop-oldest`` evicts the oldest entries
and returns them so that each still gets its ``fail`` status. Entries older than the age bound are
handed out by :meth:`Spool.take_expired`.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from .config import POLICY_DROP_OLDEST

log = logging.getLogger(__name__)

_ENTRY = re.compile(r"^(\d{12})-([A-Za-z0-9._-]+)\.json$")


class SpoolFull(Exception):
    """The sample does not fit in the spool and the policy is to refuse new samples."""


class Entry(object):
    def __init__(self, directory: str, name: str, record: Dict[str, Any], size: int) -> None:
        self.directory = directory
        self.name = name  # "<seq>-<id>"
        self.record = record
        self.size = size

    @property
    def record_path(self) -> str:
        return os.path.join(self.directory, self.name + ".json")

    @property
    def image_path(self) -> str:
        return os.path.join(self.directory, self.name + ".bin")

    def read_image(self) -> bytes:
        with open(self.image_path, "rb") as handle:
            return handle.read()

    def __repr__(self) -> str:
        return "Entry({})".format(self.name)


def write_atomic(path: str, data: bytes) -> None:
    tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Spool(object):
    def __init__(self, directory: str, max_bytes: int, max_items: int, max_age_s: float,
                 policy: str) -> None:
        self.directory = directory
        self.max_bytes = int(max_bytes)
        self.max_items = int(max_items)
        self.max_age_s = float(max_age_s)
        self.policy = policy
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self._entries: List[Entry] = []
        self._busy: Optional[Entry] = None
        self._bytes = 0
        self._next_seq = 1
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._recover()

    # -- facts --------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return self._bytes

    # -- adding and taking --------------------------------------------------------------------

    def add(self, record: Dict[str, Any], image: Optional[bytes]) -> Tuple[Entry, List[Entry]]:
        """Write one request durably; returns it and the entries evicted to make room."""
        body = json.dumps(record).encode("utf-8")
        size = len(body) + (len(image) if image is not None else 0)
        with self._lock:
            if size > self.max_bytes:
                raise SpoolFull("the sample of {} bytes is larger than the spool ({} bytes)".format(
                    size, self.max_bytes))
            evicted: List[Entry] = []
            while self._entries and (len(self._entries) + 1 > self.max_items
                                     or self._bytes + size > self.max_bytes):
                # The entry being delivered right now cannot be evicted: it would get two statuses.
                candidates = [e for e in self._entries if e is not self._busy]
                if self.policy != POLICY_DROP_OLDEST or not candidates:
                    raise SpoolFull("the spool is full ({} samples, {} of {} bytes; policy {})".format(
                        len(self._entries), self._bytes, self.max_bytes, self.policy))
                evicted.append(self._remove_locked(candidates[0]))
            name = "{:012d}-{}".format(self._next_seq, record["id"])
            self._next_seq += 1
            entry = Entry(self.directory, name, record, size)
            if image is not None:
                write_atomic(entry.image_path, bytes(image))
            write_atomic(entry.record_path, body)
            _fsync_directory(self.directory)
            self._entries.append(entry)
            self._bytes += size
            self.changed.notify_all()
            return entry, evicted

    def oldest(self, timeout: Optional[float] = None) -> Optional[Entry]:
        """The oldest entry, waiting up to `timeout` seconds for one. It is the busy entry (the one
        being delivered, never evicted) until :meth:`release` or :meth:`remove`."""
        with self._lock:
            if not self._entries and timeout:
                self.changed.wait(timeout)
            self._busy = self._entries[0] if self._entries else None
            return self._busy

    def release(self) -> None:
        with self._lock:
            self._busy = None

    def update(self, entry: Entry, **progress: Any) -> None:
        """Record delivery progress durably (a restart does not repeat a finished step)."""
        with self._lock:
            entry.record.update(progress)
            if entry in self._entries:
                body = json.dumps(entry.record).encode("utf-8")
                old_size = os.path.getsize(entry.record_path)
                write_atomic(entry.record_path, body)
                entry.size += len(body) - old_size
                self._bytes += len(body) - old_size

    def remove(self, entry: Entry) -> None:
        with self._lock:
            self._remove_locked(entry)

    def take_expired(self, now: Optional[float] = None) -> List[Entry]:
        """Remove and return the entries older than the age bound."""
        now = time.time() if now is None else now
        with self._lock:
            expired = [e for e in self._entries if now - e.record.get("accepted", now) > self.max_age_s]
            for entry in expired:
                self._remove_locked(entry)
            return expired

    def wake(self) -> None:
        with self._lock:
            self.changed.notify_all()

    # -- internals ----------------------------------------------------------------------------

    def _remove_locked(self, entry: Entry) -> Entry:
        if entry is self._busy:
            self._busy = None
        if entry in self._entries:
            self._entries.remove(entry)
            self._bytes -= entry.size
        _unlink(entry.record_path)  # the record first: without it the image is an orphan
        _unlink(entry.image_path)
        return entry

    def _recover(self) -> None:
        names = sorted(os.listdir(self.directory))
        records = set()
        for filename in names:
            match = _ENTRY.match(filename)
            path = os.path.join(self.directory, filename)
            if filename.startswith(".tmp-"):
                _unlink(path)
                continue
            if not match:
                continue
            try:
                with open(path, "rb") as handle:
                    record = json.loads(handle.read().decode("utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("spool: ignoring unreadable record %s: %s", path, exc)
                continue
            name = filename[:-len(".json")]
            size = os.path.getsize(path)
            image = os.path.join(self.directory, name + ".bin")
            if os.path.exists(image):
                size += os.path.getsize(image)
            elif record.get("kept"):
                log.warning("spool: record %s lost its image; it will fail as ImageMissing", name)
            records.add(name)
            self._entries.append(Entry(self.directory, name, record, size))
            self._bytes += size
            self._next_seq = max(self._next_seq, int(match.group(1)) + 1)
        for filename in names:
            if filename.endswith(".bin") and filename[:-len(".bin")] not in records:
                _unlink(os.path.join(self.directory, filename))
        if self._entries:
            log.info("spool %s: %d undelivered request(s) from an earlier run", self.directory,
                     len(self._entries))
