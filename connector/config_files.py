"""Reading untrusted YAML/JSON configuration (parameter files, ``model.yaml``) so it stays small.

A few hundred bytes of YAML aliases (the "billion laughs") expand to gigabytes once parsed, and
``yaml.safe_load`` expands them: a 316-byte ``model.yaml`` grew a worker to 1.27 GB and produced a
297 MB error message. Here a file is

* read as :func:`connector.files.read_regular` reads: a regular file only, opened without
  blocking (a FIFO named by ``--config`` is refused, never waited on), size-capped before it is
  parsed (``max_bytes``, default 64 KiB: far above any real parameter file or model.yaml). A
  symbolic link is followed: the path is the operator's, and a Kubernetes ConfigMap mounts every
  key as a link (docs/kubernetes.md);
* decoded as strict UTF-8 (the error names the byte offset);
* parsed by ``yaml.SafeLoader`` with aliases refused (anchors alone are harmless) and nesting
  depth capped, so parsing is linear in the file's size.

Errors are :class:`ConfigFileError` with one line naming the file and the rule; values are quoted
through :func:`connector.errors.excerpt`, never whole.
"""
from __future__ import annotations

import functools
from typing import Any

from .errors import ConfigFileError, excerpt, shorten
from .files import UnsafeFile, read_regular

DEFAULT_MAX_BYTES = 64 * 1024
MAX_DEPTH = 32


@functools.lru_cache(maxsize=None)
def _loader() -> Any:
    """A SafeLoader that refuses aliases and deep nesting while composing, before any expansion.
    Made on first use: PyYAML is imported only when a file is parsed, so that importing the
    parameters (``doctor``, ``migrate-v1 --help``) works where PyYAML is missing."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, "YAML aliases (*{}) are not allowed here".format(event.anchor[:40]),
                    event.start_mark)
            self._depth = getattr(self, "_depth", 0) + 1
            try:
                if self._depth > MAX_DEPTH:
                    raise yaml.composer.ComposerError(
                        None, None, "nested deeper than {} levels".format(MAX_DEPTH),
                        self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return NoAliasLoader


def parse_text(text: str, where: str) -> Any:
    """Parse YAML/JSON `text` without alias expansion; ConfigFileError naming `where`."""
    import yaml
    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        at = " (line {}, column {})".format(mark.line + 1, mark.column + 1) if mark else ""
        raise ConfigFileError("{} is not valid YAML/JSON: {}{}".format(
            where, shorten(problem, 200), at)) from None
    except RecursionError:
        raise ConfigFileError("{} is nested too deeply".format(where)) from None


def load_file(path: str, what: str = "configuration file",
              max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Read and parse the YAML/JSON file at `path` within the limits above."""
    where = "{} {}".format(what, excerpt(path, 300))  # a path is not the untrusted part
    try:
        data = read_regular(path, max_bytes, what, follow_links=True)
    except UnsafeFile as exc:
        raise ConfigFileError("cannot read {}: it is {}".format(where, exc.problem)) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigFileError("cannot read {}: {}".format(where, reason)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError("{} is not UTF-8 text (byte 0x{:02x} at offset {})".format(
            where, data[exc.start], exc.start)) from None
    return parse_text(text, where)
