"""Writing the results: under --out only, with fixed names, never through a symbolic link.

Nothing a V1 document says becomes a path here: the directory is the operator's ``--out`` and the
names are :data:`connector.tools.migrate.render.FILES`. ``--out`` must be a directory (created when
missing, its parent must exist) and not a symbolic link; it is opened once with ``O_NOFOLLOW`` and
every file is written by :func:`connector.files.write_at` relative to that descriptor: created
under a random temporary name beside its final one (``O_EXCL|O_NOFOLLOW``: nothing planted there
is followed or stops the run), mode 0644, then renamed over it. A rename replaces a planted
link itself instead of writing where it points. A fixed name this run does not write
(``feedback.yaml`` of an earlier run) is removed, so the directory never mixes two migrations.
"""
from __future__ import annotations

import os
import stat
from typing import Dict, Iterable

from ... import files
from .source import MigrationError, show


def prepare(out: str) -> None:
    """Check (or create) --out: a real directory, not a link, not a file."""
    try:
        info = os.lstat(out)
    except FileNotFoundError:
        try:
            os.mkdir(out, 0o755)
        except OSError as exc:
            raise MigrationError("--out {}: cannot create it: {}".format(
                show(out), exc.strerror or exc)) from None
        return
    except (OSError, ValueError) as exc:
        raise MigrationError("--out {}: {}".format(show(out), getattr(exc, "strerror", None)
                                                   or exc)) from None
    if stat.S_ISLNK(info.st_mode):
        raise MigrationError("--out {} is a symbolic link; give the real directory (results are "
                             "never written through a link)".format(show(out)))
    if not stat.S_ISDIR(info.st_mode):
        raise MigrationError("--out {} exists and is not a directory".format(show(out)))


def write(out: str, texts: Dict[str, str], fixed_names: Iterable[str]) -> None:
    """Write {name: text} into --out; remove the other `fixed_names` left by an earlier run."""
    try:
        dir_fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise MigrationError("--out {}: cannot open it as a directory (not following links): {}"
                             .format(show(out), exc.strerror or exc)) from None
    try:
        for name, text in texts.items():
            try:
                files.write_at(dir_fd, name, text.encode("utf-8"), mode=0o644)
            except OSError as exc:
                raise MigrationError("--out {}: cannot write {}: {}".format(
                    show(out), name, exc.strerror or exc)) from None
        for name in fixed_names:
            if name not in texts:
                try:
                    os.unlink(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise MigrationError("--out {}: cannot remove the stale {}: {}".format(
                        show(out), name, exc.strerror or exc)) from None
    finally:
        os.close(dir_fd)
