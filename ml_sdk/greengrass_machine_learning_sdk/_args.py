"""Argument checks shared by the clients: required arguments and request bodies."""
from __future__ import annotations

from typing import Any, Dict, Iterable


def required_arguments(kwargs: Dict[str, Any], names: Iterable[str], method: str) -> None:
    """ValueError naming every argument of `names` that is missing (or None)."""
    missing = [name for name in names if kwargs.get(name) is None]
    if len(missing) == 1:
        raise ValueError("{} argument of {} is a required argument but was not provided".format(
            missing[0], method))
    if missing:
        raise ValueError("{} arguments of {} are required arguments but were not provided".format(
            ", ".join(missing), method))


def body_bytes(value: Any, name: str) -> bytes:
    """bytes/bytearray/memoryview as they are, a readable file's content, str as UTF-8.

    str is accepted because the AWS SDK's IPC layer encoded it the same way; anything else is a
    ValueError naming the argument.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    read = getattr(value, "read", None)
    if callable(read):
        data = read()
        if isinstance(data, str):
            return data.encode("utf-8")
        if isinstance(data, (bytes, bytearray, memoryview)):
            return bytes(data)
        raise ValueError("{}.read() returned {}, not bytes".format(name, type(data).__name__))
    raise ValueError("{} must be bytes, bytearray or a readable file object, not {}".format(
        name, type(value).__name__))
