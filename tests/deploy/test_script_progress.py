"""The first-screen commands (scripts/demo.sh, scripts/test.sh) and scripts/setup-venv.sh say what
they do before anything slow starts. Checked by order, not by time: PYTHON (the interpreter
setup-venv.sh checks first) is held at a gate, and the lines must arrive while it is held."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(),
                                reason="needs the checkout's .venv (scripts/setup-venv.sh)")


class Gated:
    """`script` started with PYTHON = a python3 that waits until `release()`."""

    def __init__(self, tmp_path: Path, script: str, *args: str) -> None:
        self.fifo = tmp_path / "gate"
        os.mkfifo(str(self.fifo))
        wrapper = tmp_path / "python3"
        wrapper.write_text('#!/bin/sh\nread _ < "{}"\nexec "{}" "$@"\n'.format(self.fifo, sys.executable))
        wrapper.chmod(0o755)
        env = dict(os.environ, PYTHON=str(wrapper))
        self.proc = subprocess.Popen([str(ROOT / "scripts" / script), *args], cwd=str(ROOT), env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0,
                                     start_new_session=True)
        self.pending = b""

    def line(self) -> str:
        """The next line, read from the pipe itself (a buffered reader could hold the next line
        where select() does not see it)."""
        while b"\n" not in self.pending:
            # A bound so that a script that prints nothing before the gate fails instead of hanging.
            ready, _, _ = select.select([self.proc.stdout], [], [], 120)
            assert ready, "no line while PYTHON is held: the script is silent before its slow work"
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            assert chunk, "the script ended: " + self.pending.decode()
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()

    def release(self) -> None:
        with open(str(self.fifo), "w") as f:
            f.write("go\n")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the script and its children
        self.proc.communicate(timeout=60)


def test_setup_venv_says_what_it_does_first_and_when_it_is_ready(tmp_path):
    run = Gated(tmp_path, "setup-venv.sh", "all")
    try:
        assert run.line() == "setup-venv: checking .venv has this package with extras [all] (a few seconds)..."
        run.release()
        out, _ = run.proc.communicate(timeout=300)
        rest = (run.pending + out).decode()
    finally:
        run.stop()
    assert run.proc.returncode == 0, rest
    # pip's own output stays in the log (shown only on failure): one line, the end of the set-up.
    assert rest.splitlines()[-1].startswith("setup-venv: .venv ready (") and len(rest.splitlines()) == 1, rest


@pytest.mark.parametrize("script, args, first", [
    ("demo.sh", (), "demo: set up .venv (first run ~1 min, then seconds), start the inference service"),
    ("test.sh", (), "test: set up .venv (first run ~1 min, then seconds), the main suite (~7.5 min), then"),
    ("test.sh", ("tests/test_x.py",),
     "test: set up .venv (first run ~1 min, then seconds), then pytest tests/test_x.py"),
])
def test_first_screen_commands_say_what_they_do_before_setting_up(tmp_path, script, args, first):
    """Stopped at the gate: nothing of the suite or the demo runs here."""
    run = Gated(tmp_path, script, *args)
    try:
        assert run.line().startswith(first)
        assert run.line().startswith("setup-venv: checking .venv")
    finally:
        run.stop()
