"""When to load the model again: the model directory's fingerprint and a watch that waits for a
change to hold still.

A new version of a model is usually copied in place file by file, or swapped in by renaming a
directory or a symbolic link. The supervisor asks :meth:`ModelWatcher.changed` once per interval;
a change is reported only once the directory looks the same on two consecutive looks, so a copy
still in progress is not loaded; a version that failed to load is not tried again until it changes.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Tuple

# What a model directory's loader reads; anything else (model.onnx.partial being written beside
# the model, editor backups) is not a new version.
MODEL_FILE_SUFFIXES = (".onnx", ".so", ".json", ".params", ".meta", ".yaml", ".yml", ".txt")

Fingerprint = Tuple[Any, ...]


def model_fingerprint(path: str) -> Optional[Fingerprint]:
    """What changes when a model directory's content is replaced: the directory a symlink points
    to, and each model file's name, inode, size and modification time. None while unreadable."""
    try:
        real = os.path.realpath(path)
        entries = []
        for name in sorted(n for n in os.listdir(real) if n.endswith(MODEL_FILE_SUFFIXES)):
            st = os.stat(os.path.join(real, name))
            entries.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
        return (real, tuple(entries))
    except OSError:
        return None


class ModelWatcher:
    """The fingerprints of the version serving, of the last one that failed, and of a change
    seen once and waiting to hold still."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Taken before loading: a version that lands during the load differs from it, so it is
        # loaded too.
        self.serving: Optional[Fingerprint] = model_fingerprint(path)
        self.failed: Optional[Fingerprint] = None
        self._candidate: Optional[Fingerprint] = None

    def now(self) -> Optional[Fingerprint]:
        return model_fingerprint(self.path)

    def changed(self) -> Optional[str]:
        """The reason to reload, once a change has held still for one look; else None."""
        now = model_fingerprint(self.path)
        if now is None or now == self.serving or now == self.failed:
            self._candidate = None
            return None
        if now != self._candidate:
            self._candidate = now  # changed: look again next tick
            return None
        self._candidate = None
        return "the model directory {} changed".format(self.path)

    def loaded(self, fingerprint: Optional[Fingerprint]) -> None:
        self.serving, self.failed = fingerprint, None

    def load_failed(self, fingerprint: Optional[Fingerprint]) -> None:
        # The version that was tried; one written meanwhile differs from it and is tried next.
        self.failed = fingerprint
