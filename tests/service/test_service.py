"""The service end to end: real processes, real HTTP on loopback, the real DLR runtime, the SDK."""
import ast
import json
import os
import stat
import signal
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from connector.model import imaging
from connector import lambda_function
from connector.errors import InvalidImageError
from connector.ipc import IPCClient, IPCError, clientfile, protocol
from connector.service.inference import InferenceService
from connector.model.engine import Engine
from connector.supervision.sizing import WORKERS_ENV, choose_workers
from tests import images
from tests.dlr_fixture.build import (RED, blank_image, draw_box, memory_pixel, set_trigger,
                                     sleep_pixel)
from tests.service_process import (ROOT, Proc, clean_env, healthz, scaled, start_serve,
                                   wait_for_client_file, wait_ready)

sys.path.insert(0, str(ROOT / "ml_sdk"))
import greengrass_machine_learning_sdk as ml  # noqa: E402


@pytest.fixture()
def server(tmp_path, model_dir, sdk_env):
    proc, info, env = start_serve(tmp_path, model_dir)
    sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
    yield proc, info, env
    assert proc.stop() == 0, proc.log()


def red_box_png(x0, y0, x1, y1):
    return images.png(draw_box(blank_image(), RED, x0, y0, x1, y1))


def invoke(body, content_type="image/png", service="objectDetection", client=None):
    client = client or ml.client("inference")
    resp = client.invoke_inference_service(AlgoType="object-detection", ServiceName=service,
                                           ContentType=content_type, Body=body)
    return resp["Body"].read().decode("utf-8")


def test_seed_example_lambda_runs_unchanged(server, tmp_path):
    proc, info, env = server
    img = blank_image()
    draw_box(img, RED, 100, 150, 300, 250)
    jpg = tmp_path / "test.jpg"
    jpg.write_bytes(images.jpeg(img))
    out = subprocess.run([sys.executable, str(ROOT / "tests/seed/run_example.py"), str(jpg)],
                         env=dict(env, PYTHONPATH="{}:{}".format(ROOT / "ml_sdk", ROOT)),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "EXAMPLE_DONE" in out.stdout and "exception" not in out.stdout
    text = out.stdout.split("predictions: ", 1)[1].splitlines()[0]
    [[cls, score, x0, y0, x1, y1]] = eval(text)["prediction"]
    assert cls == 0 and score > 0.9
    assert [x0, y0, x1, y1] == pytest.approx([100 / 512, 150 / 512, 300 / 512, 250 / 512], abs=3 / 512)


def test_answer_is_exact_json_and_python_literal(server):
    text = invoke(red_box_png(64, 128, 256, 384))
    assert json.loads(text) == ast.literal_eval(text)
    assert json.loads(text)["prediction"] == [[0, 1.0, 0.125, 0.25, 0.5, 0.75]]


def test_health_reports_ready_with_backend(server):
    proc, info, env = server
    status, body = healthz(info["port"], info["token"])
    assert status == 200
    assert body["state"] == "ready" and body["worker"]["backend"] == "dlr" and body["worker"]["device"] == "cpu"


def test_bad_requests_get_clear_errors_and_service_keeps_serving(server):
    cases = [
        (images.jpeg()[:400], "image/jpeg", "truncated"),
        (b"", "image/png", "empty"),
        (b"GIF89a" + b"\x00" * 40, "image/gif", "content type"),
        (images.png(), "text/plain", "content type"),
        (images.png_bomb(20000), "image/png", "over the limit"),
    ]
    for body, ctype, words in cases:
        with pytest.raises(ml.GreengrassInferenceException) as e:
            invoke(body, ctype)
        assert words in str(e.value)
    with pytest.raises(ValueError):
        ml.client("inference").invoke_inference_service(AlgoType="object-detection",
                                                        ServiceName="objectDetection", Body=None)
    assert json.loads(invoke(red_box_png(10, 10, 50, 50)))["prediction"][0][0] == 0
    status, health = healthz(server[1]["port"], server[1]["token"])
    assert health["requests"]["refused"] == len(cases) and health["worker"]["restarts"] == 0 and health["worker"]["state"] == "ready"


def test_unserved_name_fails_fast_with_dependency_error(server):
    started = time.monotonic()
    with pytest.raises(ml.GreengrassDependencyException):
        invoke(red_box_png(10, 10, 50, 50), service="nobodyHere")
    assert time.monotonic() - started < 5


def test_many_clients_each_get_their_own_answer(server):
    # Every request draws its own rectangle; a mixed-up answer would show another rectangle.
    rng = np.random.default_rng(7)
    jobs = []
    for _ in range(96):
        x0, y0 = (int(v) for v in rng.integers(0, 400, 2))
        w, h = (int(v) for v in rng.integers(20, 100, 2))
        jobs.append((x0, y0, x0 + w, y0 + h))

    def one(box):
        doc = json.loads(invoke(red_box_png(*box)))
        return box, doc["prediction"]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, jobs, timeout=120))
    assert len(results) == len(jobs)
    for box, prediction in results:
        assert len(prediction) == 1
        assert prediction[0][2:] == pytest.approx([v / 512 for v in box], abs=1e-6)


def test_event_invocation_and_unknown_invocation_id(server):
    proc, info, env = server
    client = IPCClient(host="127.0.0.1", port=info["port"], token=info["token"], timeout=10)
    arn = protocol.inference_function_arn(info["region"], "object-detection", "objectDetection")
    ctx = protocol.encode_client_context({"Content-Type": "image/png"})
    invocation = client.post_work(arn, red_box_png(5, 5, 60, 60), ctx, invocation_type="Event")
    assert invocation
    with pytest.raises(IPCError) as e:
        client.get_work_result(arn, "no-such-invocation")
    assert e.value.status == 404


def test_sigterm_finishes_in_flight_requests_then_exits_0(tmp_path, model_dir, sdk_env):
    proc, info, env = start_serve(tmp_path, model_dir)
    sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
    slow = set_trigger(draw_box(blank_image(), RED, 20, 20, 120, 120), sleep_pixel(15))  # 1.5 s
    result = {}
    t = threading.Thread(target=lambda: result.update(text=invoke(images.png(slow))))
    t.start()
    time.sleep(0.5)  # the request is in the model now
    proc.popen.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with pytest.raises(ml.GreengrassDependencyException):
        invoke(red_box_png(10, 10, 50, 50))  # refused while draining
    t.join(30)
    assert json.loads(result["text"])["prediction"][0][0] == 0
    assert proc.popen.wait(30) == 0, proc.log()
    assert not Path(env["GG_ML_IPC_FILE"]).exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_stops_cleanly(tmp_path, model_dir, sdk_env, signum):
    """systemd's stop (KillMode=control-group) and a terminal's Ctrl-C signal every process of the
    service at once: the workers must leave stopping to their supervisor, which must not take
    their end for a crash and start new ones while it shuts down."""
    proc, info, env = start_serve(tmp_path, model_dir, own_group=True)
    sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
    assert json.loads(invoke(red_box_png(10, 10, 50, 50)))["prediction"]
    os.killpg(proc.popen.pid, signum)
    assert proc.popen.wait(scaled(30)) == 0, proc.log()
    log = proc.log()
    assert "finishing in-flight requests" in log
    assert "restarting the inference worker" not in log and "died" not in log, log


def test_connector_attaches_to_a_host_as_a_separate_lambda_process(tmp_path, model_dir, sdk_env):
    """One worker, two hosts: the connector polls get_work like a Lambda under a core."""
    ipc = tmp_path / "ipc.json"
    user_arn = "arn:aws:lambda:us-east-1:123456789012:function:objectDetection-connector:1"
    host = Proc(["host", "--port", "0", "--function", user_arn], clean_env(ipc), tmp_path / "host.log")
    worker = None
    try:
        info = wait_for_client_file(ipc, host)
        wait_ready(info["port"], host)
        # As a Greengrass core starts a user Lambda: its own ARN, its own token and the port in
        # the env (the token the host gave the function, not the callers' one).
        function_token = clientfile.function_token(str(ipc), user_arn)
        assert function_token and function_token != info["token"]
        assert stat.S_IMODE(os.stat(str(ipc) + ".functions").st_mode) == 0o600
        # The connector parameters come as environment variables too, as Greengrass passes them.
        lambda_env = clean_env(ipc, AWS_CONTAINER_AUTHORIZATION_TOKEN=function_token,
                               GG_DAEMON_PORT=str(info["port"]), MY_FUNCTION_ARN=user_arn,
                               AWS_REGION="us-east-1", MLModelDestinationPath=str(model_dir),
                               MLModelResourceId="fixture-model", LocalInferenceServiceName="objectDetection",
                               LocalInferenceServiceMemoryLimitKB="500000",
                               CONNECTOR_INFERENCE_WORKERS="1")  # so one load is the model's only one
        worker = Proc(["attach"], lambda_env, tmp_path / "worker.log")
        sdk_env.setenv("GG_ML_IPC_FILE", str(ipc))
        sdk_env.setenv("GG_ML_INFERENCE_FUNCTION_ARNS", json.dumps({"objectDetection": user_arn}))
        deadline = time.monotonic() + 30
        while True:  # until the worker has loaded its model and polls
            try:
                text = invoke(red_box_png(32, 64, 96, 128))
                break
            except ml.GreengrassDependencyException:
                assert time.monotonic() < deadline and worker.popen.poll() is None, worker.log()
                time.sleep(0.2)
        assert json.loads(text)["prediction"] == [[0, 1.0, 32 / 512, 64 / 512, 96 / 512, 128 / 512]]
        with pytest.raises(ml.GreengrassInferenceException, match="truncated"):
            invoke(images.jpeg()[:300], "image/jpeg")
        assert worker.log().count("loaded dlr model") == 1  # loaded once, not again at import
    finally:
        if worker:
            assert worker.stop() == 0, worker.log()
        assert host.stop() == 0, host.log()


def test_pixel_limit_follows_the_memory_left_by_the_model(tmp_path, model_dir, sdk_env):
    # The worker sizes the decoder's limit from what the loaded model leaves free of the limit (9
    # bytes a pixel); the largest image it accepts must then decode without tripping the memory
    # watchdog, and one pixel row more is refused from its header.
    limit_kb = 200000
    # One worker: each sizes its limit from its own loaded size, and /healthz shows the first's.
    proc, info, env = start_serve(tmp_path, model_dir, memory_limit_kb=limit_kb,
                                  env_extra={"CONNECTOR_INFERENCE_WORKERS": "1"})
    sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
    try:
        health = healthz(info["port"], info["token"])[1]
        pixels = health["worker"]["max_pixels"]
        assert pixels == (limit_kb - health["worker"]["worker_loaded_kb"]) * 1024 // imaging.BYTES_PER_DECODED_PIXEL, health
        width = 2000
        assert json.loads(invoke(images.png(blank_image(pixels // width, width))))["prediction"] == []
        with pytest.raises(ml.GreengrassInferenceException,
                           match="{}x{} = {} pixels, over the limit of {}".format(
                               width, pixels // width + 1, width * (pixels // width + 1), pixels)):
            invoke(images.png(blank_image(pixels // width + 1, width)))
        health = healthz(info["port"], info["token"])[1]
        assert health["worker"]["memory_limit_exceeded"] == 0 and health["worker"]["restarts"] == 0, health
    finally:
        assert proc.stop() == 0, proc.log()


def test_memory_limit_is_enforced_on_the_worker(tmp_path, model_dir, sdk_env):
    proc, info, env = start_serve(tmp_path, model_dir, memory_limit_kb=200000)
    sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
    box = draw_box(blank_image(), RED, 20, 20, 120, 120)
    try:
        with pytest.raises(ml.GreengrassInferenceException,
                           match="more than LocalInferenceServiceMemoryLimitKB=200000"):
            invoke(images.png(set_trigger(box.copy(), memory_pixel(12))))  # 192 MiB more
        assert json.loads(invoke(images.png(box)))["prediction"][0][:2] == [0, 1.0]
        health = healthz(info["port"], info["token"])[1]
        assert health["worker"]["memory_limit_exceeded"] == 1 and health["worker"]["restarts"] == 1, health
    finally:
        assert proc.stop() == 0, proc.log()
    log = proc.log()
    warning = next(line for line in log.splitlines() if "restarting the inference worker" in line)
    # The error line names the service and the invocation that caused it.
    assert "[objectDetection] inv=" in warning and "inv=-" not in warning, warning


def test_body_over_the_configured_maximum_is_refused_unread(tmp_path, model_dir, sdk_env):
    proc, info, env = start_serve(tmp_path, model_dir, extra_args=["--max-body-bytes", "50000"])
    sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
    try:
        small = images.png(draw_box(blank_image(), RED, 20, 20, 120, 120))
        noisy = images.png(np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8))
        assert len(small) < 50000 < len(noisy)
        with pytest.raises(ml.GreengrassDependencyException, match="413.*50000"):
            invoke(noisy)
        assert json.loads(invoke(small))["prediction"][0][:2] == [0, 1.0]
        assert healthz(info["port"], info["token"])[1]["worker"]["restarts"] == 0
    finally:
        assert proc.stop() == 0, proc.log()


def test_serve_with_bad_parameters_stops_with_one_clear_line(tmp_path):
    cfg = tmp_path / "p.json"
    cfg.write_text(json.dumps({"MLModelDestinationPath": "/x", "MLModelResourceId": "r",
                               "LocalInferenceServiceName": "bad_name",
                               "LocalInferenceServiceMemoryLimitKB": "1000"}))
    out = subprocess.run([sys.executable, "-m", "connector", "serve", "--config", str(cfg), "--port", "0"],
                         env=clean_env(tmp_path / "ipc.json"), cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "LocalInferenceServiceName='bad_name'" in out.stderr and "Traceback" not in out.stderr


# --- the Lambda handler in-process -----------------------------------------------------------------

def context(custom):
    return types.SimpleNamespace(client_context=types.SimpleNamespace(custom=custom),
                                 invocation_id="test-1")


def test_function_handler(model_dir):
    lambda_function.use_service(InferenceService(Engine.from_model_dir(str(model_dir))))
    try:
        out = lambda_function.function_handler(red_box_png(0, 0, 256, 512), context({"Content-Type": "image/png"}))
        assert out["ContentType"] == "application/json"
        assert json.loads(out["Body"]) == {"prediction": [[0, 1.0, 0.0, 0.0, 0.5, 1.0]]}
        with pytest.raises(InvalidImageError, match="no content type"):
            lambda_function.function_handler(red_box_png(0, 0, 9, 9), context(None))
        with pytest.raises(TypeError, match="image bytes"):
            lambda_function.function_handler({"not": "bytes"}, context({"Content-Type": "image/png"}))
    finally:
        lambda_function.use_service(None)


def test_lambda_module_bootstraps_from_environment_at_import(model_dir, tmp_path):
    env = clean_env(tmp_path / "ipc.json", MLModelDestinationPath=str(model_dir), MLModelResourceId="m",
                    LocalInferenceServiceName="objectDetection", LocalInferenceServiceMemoryLimitKB="300000")
    code = ("import json, types; from connector import lambda_function as lf; from tests import images; "
            "from tests.dlr_fixture.build import *; "
            "img = draw_box(blank_image(), RED, 0, 0, 64, 64); "
            "ctx = types.SimpleNamespace(client_context=types.SimpleNamespace(custom={'Content-Type': 'image/png'})); "
            "print(json.loads(lf.function_handler(images.png(img), ctx)['Body']))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "[[0, 1.0, 0.0, 0.0, 0.125, 0.125]]" in out.stdout
    assert "[objectDetection]" in out.stderr  # every log line carries the service name
    # The Lambda entry chooses its workers by the same rule as serve (auto: cores and memory).
    count = choose_workers(300000, {}, hidden_cgroup_is_unknown=True).count
    assert "connector.service: {} inference worker{}: {} auto: ".format(count, "s" if count > 1 else "", WORKERS_ENV) in out.stderr
    bad = dict(env, LocalInferenceServiceName="x")
    out = subprocess.run([sys.executable, "-c", "import connector.lambda_function"], env=bad, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "LocalInferenceServiceName='x'" in out.stderr
