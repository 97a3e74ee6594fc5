"""One step run as another, unprivileged user (uid and gid 65534, no supplementary groups): the
other local user of a trust test, or a service user without root's exemptions.

The step runs in a forked child, so it can be any function of the test (no interpreter or import
path has to be reachable by that user); it returns what happened as one line of text.
"""
import os
from typing import Any, Callable

import pytest

NOBODY = 65534
_CANNOT_SWITCH = 77


def as_nobody(step: Callable[[], Any]) -> str:
    """``"ok: <result>"``, or ``"<ExceptionName>: <message>"`` when `step` raised, run as uid/gid
    NOBODY. Skips the test, saying why, where this process cannot switch users (not root)."""
    if os.geteuid() != 0:
        pytest.skip("switching to uid {} needs root; the tests run as uid {}".format(NOBODY, os.geteuid()))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: it never returns into pytest
        code = 0
        try:
            os.close(read)
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            except OSError as exc:
                outcome, code = "cannot switch to uid {}: {}".format(NOBODY, exc), _CANNOT_SWITCH
            else:
                try:
                    outcome = "ok: {}".format(step())
                except BaseException as exc:  # reported to the test, whatever it is
                    outcome = "{}: {}".format(type(exc).__name__, exc)
            os.write(write, outcome.encode("utf-8", "replace"))
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        text = pipe.read().decode("utf-8")
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == _CANNOT_SWITCH:
        pytest.skip(text)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, text)
    return text
