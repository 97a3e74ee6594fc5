"""Hot reload: a new model version placed atomically in the model directory takes over without a
dropped request; a broken one leaves the old model serving; reload on demand (SIGHUP)."""
import json
import os
import shutil
import signal
import threading
import time

import pytest

from connector import demos
from connector.errors import ParameterError
from connector.errors import WorkerError
from connector.service.inference import LOAD_TIMEOUT_ENV, WATCH_ENV, load_timeout, watch_interval
from connector.supervision.supervisor import WorkerSupervisor
from tests import images
from tests.dlr_fixture.build import RED, blank_image, build_dlr_model, draw_box
from tests.service_process import healthz, start_serve

BOX = [0, 1.0, 10 / 512, 20 / 512, 110 / 512, 220 / 512]  # boxes come normalised to the image


def red_png():
    return images.png(draw_box(blank_image(), RED, 10, 20, 110, 220))


def swap_symlink(link, target):
    """The atomic way to replace a multi-file model: point a new link at it, rename over the old."""
    tmp = str(link) + ".new"
    os.symlink(str(target), tmp)
    os.replace(tmp, str(link))


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


class Traffic:
    """Requests sent back to back from a thread while the model is being replaced."""

    def __init__(self, pool):
        self.pool, self.answers, self.failures = pool, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self):
        body = red_png()
        while not self._stop.is_set():
            try:
                self.answers.append(self.pool.infer(body, "image/png", "traffic").text)
            except Exception as e:  # noqa: BLE001 - any failure is what this test looks for
                self.failures.append(repr(e))

    def stop(self):
        self._stop.set()
        self._thread.join(30)
        return self.answers, self.failures


@pytest.fixture
def versions(tmp_path):
    """current -> v1 (DLR fixture), plus v2 (the bundled demo ONNX detector) and a broken v3."""
    v1 = tmp_path / "v1"
    build_dlr_model(v1)
    v2 = tmp_path / "v2"
    shutil.copytree(demos.model_path("demo-ssd"), str(v2))
    v3 = tmp_path / "v3"
    v3.mkdir()
    (v3 / "model.onnx").write_bytes(b"this is not an ONNX graph")
    current = tmp_path / "current"
    os.symlink(str(v1), str(current))
    return current, v1, v2, v3


def test_new_version_takes_over_without_dropping_a_request(versions):
    current, v1, v2, v3 = versions
    pool = WorkerSupervisor(str(current), timeout_s=10.0, service_name="reload-test", watch_interval_s=0.2)
    try:
        assert pool.backend[0] == "dlr"
        traffic = Traffic(pool)
        wait_until(lambda: len(traffic.answers) >= 3, what="first answers")
        swap_symlink(current, v2)
        wait_until(lambda: pool.backend[0] == "onnxruntime", what="the switch to v2")
        seen = len(traffic.answers)
        wait_until(lambda: len(traffic.answers) >= seen + 3, what="answers from v2")
        answers, failures = traffic.stop()
    finally:
        pool.close()
    assert failures == []
    assert pool.counters["reloads"] == 1 and pool.counters["restarts"] == 0
    assert json.loads(answers[0])["prediction"] == [BOX]  # the fixture's exact box, from v1
    assert json.loads(answers[-1]) != json.loads(answers[0])  # the demo detector answers otherwise


def test_broken_version_leaves_the_old_one_serving(versions, caplog):
    current, v1, v2, v3 = versions
    pool = WorkerSupervisor(str(current), timeout_s=10.0, service_name="reload-test", watch_interval_s=0.2)
    try:
        pid = pool.worker_pid()
        traffic = Traffic(pool)
        swap_symlink(current, v3)
        wait_until(lambda: pool.counters["reload_failures"] == 1, what="the failed reload")
        time.sleep(1.0)  # an unchanged broken directory is not retried in a loop
        answers, failures = traffic.stop()
        assert failures == [] and answers
        assert all(json.loads(a)["prediction"] == [BOX] for a in answers)
        assert pool.counters["reload_failures"] == 1 and pool.worker_pid() == pid
        assert "model.onnx" in pool.last_error
        assert any("reload failed, the previous model keeps serving" in r.getMessage()
                   for r in caplog.records)
        # Fixed (a new version arrives): picked up again.
        swap_symlink(current, v2)
        wait_until(lambda: pool.backend[0] == "onnxruntime", what="the switch to v2")
    finally:
        pool.close()


def test_single_file_replaced_by_rename_is_reloaded(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(demos.model_path("demo-ssd"), str(model))
    pool = WorkerSupervisor(str(model), timeout_s=10.0, service_name="reload-test", watch_interval_s=0.2)
    try:
        pid = pool.worker_pid()
        partial = model / "model.onnx.partial"  # not *.onnx, so never taken for the model
        shutil.copyfile(os.path.join(demos.model_path("demo-yolov3"), "model.onnx"), str(partial))
        time.sleep(1.0)
        assert pool.counters["reloads"] == 0  # a file being written beside the model is not a version
        os.replace(str(partial), str(model / "model.onnx"))
        wait_until(lambda: pool.counters["reloads"] >= 1 and pool.worker_pid() != pid,
                   what="the reload")
        assert "prediction" in json.loads(pool.infer(red_png(), "image/png").text)
    finally:
        pool.close()


def test_reload_on_demand_without_watching(versions):
    current, v1, v2, v3 = versions
    pool = WorkerSupervisor(str(current), timeout_s=10.0, service_name="reload-test", watch_interval_s=None)
    try:
        swap_symlink(current, v2)
        time.sleep(1.5)
        assert pool.backend[0] == "dlr"  # not watching: nothing happens by itself
        pool.reload("test")
        wait_until(lambda: pool.backend[0] == "onnxruntime", what="the on-demand reload")
    finally:
        pool.close()


def test_sighup_reloads_the_serving_process(tmp_path, versions):
    current, v1, v2, v3 = versions
    # One worker: with several, health shows the new backend once the first has switched, while
    # the others still reload one after another (each counts its reload).
    proc, info, env = start_serve(tmp_path, current, env_extra={"CONNECTOR_MODEL_WATCH_SECONDS": "0",
                                                                "CONNECTOR_INFERENCE_WORKERS": "1"})
    try:
        before = healthz(info["port"], info["token"])[1]
        assert before["worker"]["backend"] == "dlr" and before["worker"]["reloads"] == 0
        swap_symlink(current, v2)
        proc.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: healthz(info["port"], info["token"])[1]["worker"]["backend"] == "onnxruntime", what="SIGHUP reload")
        after = healthz(info["port"], info["token"])[1]
        assert after["worker"]["reloads"] == 1 and after["worker"]["worker_pid"] != before["worker"]["worker_pid"]
        assert after["worker"]["state"] == "ready"
    finally:
        assert proc.stop() == 0, proc.log()
    assert "reloading the model (SIGHUP)" in proc.log()


@pytest.mark.parametrize("raw, expected", [(None, 2.0), ("", 2.0), ("0", None), ("0.5", 0.5), ("3600", 3600.0)])
def test_watch_interval_from_the_environment(raw, expected):
    env = {} if raw is None else {WATCH_ENV: raw}
    assert watch_interval(env) == expected


@pytest.mark.parametrize("raw", ["soon", "-1", "3601", "nan"])
def test_bad_watch_interval_is_a_parameter_error(raw):
    with pytest.raises(ParameterError, match=WATCH_ENV):
        watch_interval({WATCH_ENV: raw})


def test_version_that_loads_but_cannot_run_is_refused_at_load(versions, tmp_path):
    # It loads, but every run fails in the runtime. The warm-up inference at load finds that, so
    # the reload fails and the old version serves on.
    from tests.onnx_models import failing_detector
    current, v1, v2, v3 = versions
    v4 = tmp_path / "v4"
    v4.mkdir()
    failing_detector(str(v4 / "model.onnx"))
    pool = WorkerSupervisor(str(current), timeout_s=10.0, service_name="reload-test", watch_interval_s=0.2)
    try:
        swap_symlink(current, v4)
        wait_until(lambda: pool.counters["reload_failures"] == 1, what="the failed reload")
        assert "failed its first inference" in pool.last_error
        assert json.loads(pool.infer(red_png(), "image/png").text)["prediction"] == [BOX]
    finally:
        pool.close()


def test_version_written_while_a_broken_one_loads_is_still_loaded(versions):
    current, v1, v2, v3 = versions
    pool = WorkerSupervisor(str(current), timeout_s=10.0, service_name="reload-test", watch_interval_s=0.2)
    real_spawn = pool.spawn

    def load_broken_while_a_fix_lands():
        pool.spawn = real_spawn  # once
        swap_symlink(current, v2)  # the fixed version arrives while the broken one is loading
        raise WorkerError("the broken version failed to load")

    try:
        pool.spawn = load_broken_while_a_fix_lands
        swap_symlink(current, v3)
        wait_until(lambda: pool.counters["reload_failures"] == 1, what="the failed reload")
        wait_until(lambda: pool.backend[0] == "onnxruntime", what="the version that landed meanwhile")
    finally:
        pool.close()


def test_model_load_timeout_from_the_environment():
    """Emulated or very slow devices need longer than the default 120 s to import a runtime."""
    assert load_timeout({}) == 120.0
    assert load_timeout({LOAD_TIMEOUT_ENV: "900"}) == 900.0
    for raw in ("0", "-5", "3601", "later", "nan"):
        with pytest.raises(ParameterError, match=LOAD_TIMEOUT_ENV):
            load_timeout({LOAD_TIMEOUT_ENV: raw})
