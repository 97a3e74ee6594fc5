"""Reading one migration source: an untrusted JSON file, within caps, with one-line errors.

The files come off a device or out of someone's AWS CLI history: any of them may be truncated,
huge, not JSON, or built to hurt the reader. So a source is

* a regular file (a FIFO or a device would block or never end), opened without blocking, and
  at most :data:`MAX_BYTES` (4 MiB: a group of hundreds of functions is far below it), read by
  :func:`connector.files.read_regular`;
* strict UTF-8 (a UTF-8 byte-order mark is tolerated: Windows editors write one);
* nested at most :data:`MAX_DEPTH` levels, checked on the text before it is parsed (the deepest
  real document, a function's ``RunAs`` in a get-function-definition-version output, is 8);
* JSON without duplicate keys (two ``Parameters`` in one object would let a reader and a reviewer
  see different values) and without ``NaN``/``Infinity`` (not JSON).

Every failure is a :class:`MigrationError` whose message names the file and what was wrong.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Tuple

from ...errors import MigrationError
from ...files import UnsafeFile, read_regular
from ...ipc.protocol import nesting_exceeds

MAX_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 32
SHOW_CHARS = 120

# Characters that change how text around them is shown without being visible themselves: the
# line and paragraph separators (str.splitlines() and some terminals break lines there) and the
# bidirectional-text controls (U+202E shows what follows backwards: "Trojan Source").
LAYOUT_CONTROLS = "\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f" + LAYOUT_CONTROLS + "]")


def show(value: Any, limit: int = SHOW_CHARS) -> str:
    """A value from a document, safe to print: plain when it is printable text, else repr();
    cut to about `limit` characters. Documents are untrusted: a newline or a terminal escape in
    a topic must not forge a line of the report or repaint the operator's terminal."""
    text = value if isinstance(value, str) else repr(value)
    if _UNPRINTABLE.search(text) or text != text.strip() or not text:
        text = repr(value)
    if len(text) > limit:
        return "{}...({} characters)".format(text[:limit], len(text))
    return text


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate key {} in one object".format(show(key, 60)))
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError("{} is not JSON".format(name))


def parse_json(text: str, where: str) -> Any:
    """Parse `text` under the depth and duplicate-key rules; MigrationError naming `where`."""
    if nesting_exceeds(text, MAX_DEPTH):
        raise MigrationError("{} is nested deeper than {} levels; no Greengrass V1 document is"
                             .format(where, MAX_DEPTH))
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise MigrationError("{} is not JSON: {} (line {}, column {})".format(
            where, exc.msg, exc.lineno, exc.colno)) from None
    except (ValueError, RecursionError) as exc:
        raise MigrationError("{} is not usable JSON: {}".format(where, exc)) from None


def read_source(path: str) -> Any:
    """The parsed JSON of the file at `path`, or MigrationError naming it and the rule."""
    try:
        # The operator named the file: a link is followed (as --config's is).
        data = read_regular(path, MAX_BYTES, "Greengrass V1 document", follow_links=True)
    except UnsafeFile as exc:
        raise MigrationError("{}: {}; a SOURCE is a regular JSON file of at most {} bytes".format(
            show(path), exc.problem, MAX_BYTES)) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise MigrationError("{}: cannot read it: {}".format(show(path), reason)) from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MigrationError("{}: not UTF-8 text (byte 0x{:02x} at offset {})".format(
            show(path), data[exc.start], exc.start)) from None
    if not text.strip():
        raise MigrationError("{}: empty file; give a group.json or an `aws greengrass get-...-"
                             "definition-version` output".format(show(path)))
    return parse_json(text, show(path))
