"""The test helper that starts services: a failed readiness wait leaves no process behind."""
from __future__ import annotations

import os
import time

import pytest

from tests import service_process


def _processes_mentioning(text: str):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/{}/cmdline".format(pid), "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmd:
            found.append((int(pid), cmd))
    return found


def test_failed_readiness_wait_kills_the_service_and_its_worker(tmp_path, model_dir, monkeypatch):
    started = []
    real_wait = service_process.wait_for_client_file

    def wait_then_fail(path, proc, *args, **kwargs):
        started.append(proc)
        real_wait(path, proc, *args, **kwargs)
        raise AssertionError("not ready (simulated slow machine)")

    monkeypatch.setattr(service_process, "wait_for_client_file", wait_then_fail)
    with pytest.raises(AssertionError, match="simulated slow machine"):
        service_process.start_serve(tmp_path, model_dir)
    assert started and started[0].popen.poll() is not None, "serve left running"
    # serve names the parameter file under tmp_path; its worker names the model directory.
    def left():
        return _processes_mentioning(str(tmp_path)) + _processes_mentioning(str(model_dir))
    deadline = time.monotonic() + service_process.scaled(10)
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left() == []


def test_waits_scale_with_the_environment_factor(monkeypatch):
    monkeypatch.setattr(service_process, "WAIT_FACTOR", 20.0)
    assert service_process.scaled(30) == 600
    monkeypatch.setattr(service_process, "WAIT_FACTOR", 0.1)
    assert service_process.scaled(30) == 30  # never shorter than the written wait
