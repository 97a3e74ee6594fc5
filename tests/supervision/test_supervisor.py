"""Worker supervision with the real DLR runtime: crashes, hangs and kills cost one request only."""
import os
import signal
import threading
import time

import pytest

from connector.errors import (BackendError, InferenceTimeoutError, InvalidImageError,
                              MemoryLimitError, WorkerCrashedError, WorkerError)
from connector.supervision.supervisor import WorkerSupervisor
from tests import images
from tests.service_process import scaled
from tests.dlr_fixture.build import (CRASH_PIXEL, ERROR_PIXEL, RED, blank_image, build_dlr_model,
                                     draw_box, memory_pixel, set_trigger, sleep_pixel)


@pytest.fixture(scope="module")
def supervisor(tmp_path_factory):
    d = tmp_path_factory.mktemp("dlr-model")
    build_dlr_model(d)
    p = WorkerSupervisor(str(d), timeout_s=3.0, service_name="workers-test")
    yield p
    p.close()


def red(x0=10, y0=20, x1=110, y1=220):
    return draw_box(blank_image(), RED, x0, y0, x1, y1)


def ok(supervisor, img):
    # Its own deadline, scaled: on a slow machine (emulation) the replacement of a worker that
    # just failed takes longer than the supervisor's 3 s request timeout to load the model.
    return supervisor.infer(images.png(img), "image/png", deadline=time.monotonic() + scaled(10)).text


def test_answers_and_refusals(supervisor):
    assert '"prediction": [[0, 1.0' in ok(supervisor, red())
    with pytest.raises(InvalidImageError, match="truncated"):
        supervisor.infer(images.jpeg()[:200], "image/jpeg")
    with pytest.raises(BackendError, match="injected failure"):
        supervisor.infer(images.png(set_trigger(red(), ERROR_PIXEL)), "image/png")
    assert supervisor.counters["restarts"] == 0  # refusals and model errors keep the worker


def test_native_crash_fails_only_that_request(supervisor):
    before, pid = supervisor.counters["restarts"], supervisor.worker_pid()
    with pytest.raises(WorkerCrashedError, match="SIGSEGV"):
        supervisor.infer(images.png(set_trigger(red(), CRASH_PIXEL)), "image/png")
    assert supervisor.counters["restarts"] == before + 1 and supervisor.worker_pid() != pid
    assert '"prediction": [[0, 1.0' in ok(supervisor, red())


def test_hung_model_times_out_and_is_replaced(supervisor):
    pid = supervisor.worker_pid()
    started = time.monotonic()
    with pytest.raises(InferenceTimeoutError, match="restarted"):
        supervisor.infer(images.png(set_trigger(red(), sleep_pixel(100))), "image/png")  # 10 s > 3 s
    assert time.monotonic() - started < scaled(8)
    assert supervisor.worker_pid() != pid and supervisor.counters["hangs"] >= 1
    assert '"prediction": [[0, 1.0' in ok(supervisor, red())


def test_worker_killed_from_outside(supervisor):
    slow = set_trigger(red(), sleep_pixel(10))  # 1 s: long enough to be killed mid-request
    pid = supervisor.worker_pid()
    threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
    with pytest.raises(WorkerCrashedError, match="SIGKILL"):
        supervisor.infer(images.png(slow), "image/png")
    assert '"prediction": [[0, 1.0' in ok(supervisor, red())


# --- the memory limit (LocalInferenceServiceMemoryLimitKB) -----------------------------------------

# What a worker takes once loaded differs by platform (Debian's OpenCV maps far more than the
# PyPI wheel; under qemu-user the emulator's code cache counts too: 188 MB on armhf), so the
# limit is 100 MB above what an unlimited worker of this machine takes.
HEADROOM_KB = 100_000


@pytest.fixture(scope="module")
def limited_supervisor(tmp_path_factory, supervisor):
    d = tmp_path_factory.mktemp("dlr-model-limited")
    build_dlr_model(d)
    limit = supervisor.worker_info()["worker_loaded_kb"] + HEADROOM_KB
    p = WorkerSupervisor(str(d), timeout_s=10.0, memory_limit_kb=limit, service_name="workers-test")
    yield p
    p.close()


def test_memory_under_the_limit_is_fine(limited_supervisor):
    assert 20_000 < limited_supervisor.worker_info()["worker_loaded_kb"] < limited_supervisor.memory_limit_kb - 60_000
    ok(limited_supervisor, set_trigger(red(), memory_pixel(2)))  # 32 MiB more: under the limit
    assert limited_supervisor.counters["memory_limit_exceeded"] == 0


def test_request_over_the_memory_limit_fails_and_the_worker_is_replaced(limited_supervisor):
    pid = limited_supervisor.worker_pid()
    started = time.monotonic()
    with pytest.raises(MemoryLimitError, match=r"used \d+ KB on this request, more than "
                                               r"LocalInferenceServiceMemoryLimitKB={}".format(
                                                   limited_supervisor.memory_limit_kb)):
        limited_supervisor.infer(images.png(set_trigger(red(), memory_pixel(12))), "image/png")  # +192 MiB
    assert time.monotonic() - started < scaled(1.0)  # stopped while allocating, not after its 1 s hold
    assert limited_supervisor.counters["memory_limit_exceeded"] == 1
    assert '"prediction": [[0, 1.0' in ok(limited_supervisor, red())
    assert limited_supervisor.worker_pid() != pid


def test_model_that_does_not_fit_the_limit_is_a_clear_start_error(tmp_path):
    build_dlr_model(tmp_path)
    # Caught while loading (the watchdog runs then too) or once loaded, whichever comes first.
    with pytest.raises(WorkerError, match=r"(uses \d+ KB once the model is loaded|used \d+ KB while "
                                          r"loading the model), more than "
                                          r"LocalInferenceServiceMemoryLimitKB=10000; .*raise the limit"):
        WorkerSupervisor(str(tmp_path), memory_limit_kb=10_000, service_name="workers-test")


def test_worker_that_died_while_idle_is_replaced_without_failing_a_request(supervisor):
    pid = supervisor.worker_pid()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert '"prediction": [[0, 1.0' in ok(supervisor, red())
    assert supervisor.worker_pid() != pid


# --- model loading ---------------------------------------------------------------------------------

def test_model_load_has_its_own_timeout(tmp_path, monkeypatch):
    build_dlr_model(tmp_path)
    monkeypatch.setenv("FIXTURE_LOAD_SLEEP_S", "60")  # read by the fixture library when it loads
    started = time.monotonic()
    with pytest.raises(WorkerError, match="did not load the model within 2 s"):
        WorkerSupervisor(str(tmp_path), timeout_s=30.0, load_timeout_s=2.0, service_name="workers-test")
    assert time.monotonic() - started < 20


def test_crash_while_loading_is_a_clear_start_error(tmp_path, monkeypatch):
    build_dlr_model(tmp_path)
    monkeypatch.setenv("FIXTURE_LOAD_CRASH", "1")
    with pytest.raises(WorkerCrashedError, match="died while loading the model .killed by SIGSEGV"):
        WorkerSupervisor(str(tmp_path), service_name="workers-test")


def test_replacement_that_cannot_start_fails_requests_with_the_reason(tmp_path):
    model = tmp_path / "model"
    build_dlr_model(model)
    p = WorkerSupervisor(str(model), timeout_s=5.0, service_name="workers-test", watch_interval_s=None)
    try:
        for f in model.iterdir():
            f.unlink()  # the model is gone: the next worker cannot load it
        with pytest.raises(WorkerCrashedError):
            p.infer(images.png(set_trigger(red(), CRASH_PIXEL)), "image/png")
        with pytest.raises(WorkerError, match="cannot be started: .*model directory"):
            for _ in range(100):  # until the arbiter's first attempt has failed
                try:
                    p.infer(images.png(red()), "image/png")
                except InferenceTimeoutError:
                    continue
        assert p.state == "restarting" and p.last_error
        build_dlr_model(model)  # back: the backoff retry picks it up
        deadline = time.monotonic() + 30
        while p.state != "ready" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert '"prediction": [[0, 1.0' in ok(p, red())
    finally:
        p.close()
