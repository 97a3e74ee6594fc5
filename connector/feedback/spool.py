"""The durable on-disk queue of accepted feedback requests.

Every accepted request is one entry: ``<seq>-<id>.json`` (the record) and, for a kept sample,
``<seq>-<id>.bin`` (the model input). Both are written to a fresh temporary name (O_EXCL|O_NOFOLLOW:
nothing planted is written through), fsync'd and renamed, image first, so an entry exists exactly
when its record does; a crash leaves at most an orphan image or temporary file, removed at the
next start. Entries are delivered oldest first (the sequence number), removed once done.

What is on disk is untrusted input. The directory must be safe (the client file's rule,
:func:`connector.files.directory_reason`) or the service does not start; files are read
without following links, only when regular, with a size cap; records are checked by
:func:`.records.validate_record`. A bad entry is moved to ``quarantine/`` (bounded), counted and logged.

Bounds (bytes, items, age) are checked when a request is added. When it would not fit, the policy
decides: ``reject-new`` refuses it (:class:`SpoolFull`), ``drop-oldest`` evicts the oldest entries
and returns them so that each still gets its ``fail`` status. Entries older than the age bound are
handed out by :meth:`Spool.take_expired`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ..errors import ParameterError
from ..files import (DIRECTORY_FLAGS, TMP_PREFIX, UnsafeFile, directory_reason, read_regular,
                     write_atomic)
from .config import POLICY_DROP_OLDEST, normal_path
from .records import ID_PATTERN, MAX_RECORD_BYTES, validate_record

log = logging.getLogger(__name__)

# Loose on purpose: a record whose name holds an id we would not write is quarantined, not ignored.
_ENTRY = re.compile(r"^(\d{12})-(.{1,200})\.json$")
QUARANTINE = "quarantine"
QUARANTINE_MAX_FILES = 200
QUARANTINE_MAX_BYTES = 32 * 1024 * 1024
class SpoolFull(Exception):
    """The sample does not fit in the spool and the policy is to refuse new samples."""


class Quarantined(NamedTuple):
    name: str  # "<seq>-<id>"
    request_id: Optional[str]  # None when the name holds no valid id: no status can be sent
    reason: str


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _discard(path: str) -> None:
    """Remove a leftover found at start-up; what cannot be removed (a directory) is logged."""
    try:
        _unlink(path)
    except OSError as exc:
        log.warning("spool: cannot remove the leftover %s: %s", path, exc)


def prepare_directory(directory: str) -> None:
    """Create the spool directory 0700 when missing; ParameterError (one line, with the fix) when
    another user could plant or replace entries in it."""
    directory = normal_path(directory)  # "<link>/": lstat would follow the link
    what = "FeedbackSpoolDirectory {}".format(directory)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.lstat(directory)
    except OSError as exc:
        raise ParameterError("cannot create {}: {}".format(what, exc.strerror or exc)) from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ParameterError("{} is {}; give the real directory's path".format(
            what, "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"))
    reason = directory_reason(directory)
    if reason:
        raise ParameterError("unsafe {}: {}; another user could plant or replace spooled samples. Fix: "
                             "chmod go-w (and chown to this user) the directories named, or choose a "
                             "directory only this user can write".format(what, reason))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ParameterError("cannot write in {}: permission denied".format(what))


class Entry(object):
    def __init__(self, directory: str, name: str, record: Dict[str, Any], size: int,
                 record_bytes: int = 0) -> None:
        self.directory = directory
        self.name = name  # "<seq>-<id>"
        self.record = record
        self.size = size
        self.record_bytes = record_bytes

    @property
    def record_path(self) -> str:
        return os.path.join(self.directory, self.name + ".json")

    @property
    def image_path(self) -> str:
        return os.path.join(self.directory, self.name + ".bin")

    def read_image(self, limit: int) -> bytes:
        """The spooled image (a regular file, never through a link, at most `limit` bytes and the
        size the record says); UnsafeFile or OSError otherwise."""
        data = read_regular(self.image_path, limit)
        expected = self.record.get("image-bytes")
        if expected is not None and len(data) != expected:
            raise UnsafeFile("{} is {} bytes, not the {} its record says".format(
                self.image_path, len(data), expected))
        return data

    def __repr__(self) -> str:
        return "Entry({})".format(self.name)


class Spool(object):
    def __init__(self, directory: str, max_bytes: int, max_items: int, max_age_s: float,
                 policy: str) -> None:
        self.directory = normal_path(directory)
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
        self.quarantined_count = 0
        # Quarantined at start-up, waiting for the service to give them their fail status.
        self.quarantined: List[Quarantined] = []
        prepare_directory(self.directory)
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
        """Write one request durably; returns it and the entries evicted to make room. OSError
        (a full disk) leaves nothing behind."""
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
            entry = Entry(self.directory, name, record, size, len(body))
            try:
                if image is not None:
                    write_atomic(entry.image_path, bytes(image))
                write_atomic(entry.record_path, body)
            except OSError:
                _unlink(entry.image_path)
                _unlink(entry.record_path)
                raise
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
        """Record delivery progress durably (a restart does not repeat a finished step). The
        progress is kept in memory even when writing it fails (OSError)."""
        with self._lock:
            entry.record.update(progress)
            if entry in self._entries:
                body = json.dumps(entry.record).encode("utf-8")
                write_atomic(entry.record_path, body)
                entry.size += len(body) - entry.record_bytes
                self._bytes += len(body) - entry.record_bytes
                entry.record_bytes = len(body)

    def remove(self, entry: Entry) -> None:
        with self._lock:
            self._remove_locked(entry)

    def take_expired(self, now: Optional[float] = None) -> List[Entry]:
        """Remove and return the entries older than the age bound."""
        now = time.time() if now is None else now
        with self._lock:
            expired = [e for e in self._entries if now - e.record["accepted"] > self.max_age_s]
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
        bad: List[Quarantined] = []
        for filename in names:
            path = os.path.join(self.directory, filename)
            if filename.startswith(TMP_PREFIX):
                _discard(path)  # a link or a file: unlink never follows it
                continue
            match = _ENTRY.match(filename)
            if not match:
                continue
            name = filename[:-len(".json")]
            try:
                entry = self._load(name)
            except (OSError, ValueError) as exc:
                request_id = match.group(2) if re.fullmatch(ID_PATTERN, match.group(2)) else None
                bad.append(Quarantined(name, request_id, str(exc)))
                continue
            records.add(name)
            self._entries.append(entry)
            self._bytes += entry.size
            self._next_seq = max(self._next_seq, int(match.group(1)) + 1)
        if bad:
            self._quarantine(bad)
        for filename in names:
            if filename.endswith(".bin") and filename[:-len(".bin")] not in records:
                _discard(os.path.join(self.directory, filename))
        if bad:
            log.warning("spool %s: %d damaged record(s) moved to %s (first: %s: %s)", self.directory,
                        len(bad), os.path.join(self.directory, QUARANTINE), bad[0].name, bad[0].reason)
        if self._entries:
            log.info("spool %s: %d undelivered request(s) from an earlier run", self.directory,
                     len(self._entries))

    def _load(self, name: str) -> Entry:
        path = os.path.join(self.directory, name + ".json")
        data = read_regular(path, MAX_RECORD_BYTES)
        try:
            record = validate_record(json.loads(data.decode("utf-8")), name)
        except RecursionError:
            raise ValueError("the record is nested too deeply") from None
        size = len(data)
        image = os.path.join(self.directory, name + ".bin")
        try:
            st = os.lstat(image)
        except FileNotFoundError:
            if record["kept"] and record.get("failure") is None:
                log.warning("spool: record %s lost its image; it will fail as ImageMissing", name)
        else:
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeFile("{} is not a regular file".format(image))
            if record.get("image-bytes") not in (None, st.st_size):
                raise UnsafeFile("{} is {} bytes, not the {} its record says".format(
                    image, st.st_size, record["image-bytes"]))
            size += st.st_size
        return Entry(self.directory, name, record, size, len(data))

    def _quarantine(self, bad: List[Quarantined]) -> None:
        """Move the entries' files aside (an operator may want to look at them), behind the time,
        keeping the quarantine within its bounds (the oldest go first)."""
        self.quarantined_count += len(bad)
        self.quarantined.extend(bad)
        folder = os.path.join(self.directory, QUARANTINE)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        try:
            qfd = os.open(folder, DIRECTORY_FLAGS)
        except OSError as exc:
            log.warning("spool: %s is not a usable directory (%s); removing the damaged records", folder, exc)
            for item in bad:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, item.name + ".json"))
            return
        try:
            stamp = "{:020d}-".format(int(time.time() * 1e9))
            for item in bad:
                self._next_seq = max(self._next_seq, int(item.name[:12]) + 1)
                for suffix in (".json", ".bin"):
                    with contextlib.suppress(OSError):  # what stays is found again next time
                        os.rename(os.path.join(self.directory, item.name + suffix),
                                  stamp + item.name + suffix, dst_dir_fd=qfd)
            self._prune_quarantine(folder, qfd)
        finally:
            os.close(qfd)

    @staticmethod
    def _prune_quarantine(folder: str, qfd: int) -> None:
        names = sorted(os.listdir(qfd))
        sizes = {n: os.lstat(n, dir_fd=qfd).st_size for n in names}
        total = sum(sizes.values())
        while names and (len(names) > QUARANTINE_MAX_FILES or total > QUARANTINE_MAX_BYTES):
            oldest = names.pop(0)
            total -= sizes[oldest]
            if stat.S_ISDIR(os.lstat(oldest, dir_fd=qfd).st_mode):
                shutil.rmtree(os.path.join(folder, oldest), ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(oldest, dir_fd=qfd)
