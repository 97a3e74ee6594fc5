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


def test_a_call_while_the_model_loads_is_told_to_retry_and_the_sdk_waits(tmp_path, model_dir, sdk_env):
    """While the model loads the host answers 503 ServiceStarting with Retry-After (not 404, the
    answer to a misspelt service name), and the SDK waits and retries within its timeout."""
    import json
    import subprocess
    import sys

    from connector.ipc import IPCClient, protocol
    from connector.ipc.client import IPCError
    from tests import images

    ipc = tmp_path / "ipc.json"
    env = service_process.clean_env(ipc, FIXTURE_LOAD_SLEEP_S="3", CONNECTOR_INFERENCE_WORKERS="1")
    cfg = service_process.params_file(tmp_path / "params.json", model_dir)
    proc = service_process.Proc(["serve", "--config", str(cfg), "--port", "0"], env, tmp_path / "serve.log")
    try:
        info = service_process.wait_for_client_file(ipc, proc)
        arn = protocol.inference_function_arn(info["region"], "object-detection", "objectDetection")
        client = IPCClient("127.0.0.1", info["port"], info["token"], timeout=5)
        with pytest.raises(IPCError) as refused:
            client.post_work(arn, images.png(), protocol.encode_client_context({"Content-Type": "image/png"}))
        assert (refused.value.status, refused.value.error_type) == (503, "ServiceStarting"), refused.value
        assert "model fixture-model is loading" in str(refused.value)
        # The unchanged SDK, in another process: it waits for the model and gets its answer.
        call = ("import sys, greengrass_machine_learning_sdk as ml; r = ml.client('inference')"
                ".invoke_inference_service(AlgoType='object-detection', ServiceName='objectDetection', "
                "ContentType='image/png', Body=open(sys.argv[1], 'rb').read()); print(r['Body'].read().decode())")
        image = tmp_path / "red.png"
        image.write_bytes(images.png())
        sdk = dict(env, PYTHONPATH=os.pathsep.join([str(service_process.ROOT), str(service_process.ROOT / "ml_sdk")]))
        out = subprocess.run([sys.executable, "-c", call, str(image)], env=sdk, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "prediction" in json.loads(out.stdout)
    finally:
        proc.stop()


def test_a_wrong_service_name_is_told_which_services_run(tmp_path, model_dir, sdk_env):
    import greengrass_machine_learning_sdk as ml

    proc, info, env = service_process.start_serve(tmp_path, model_dir)
    sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
    try:
        with pytest.raises(ml.GreengrassDependencyException) as failed:
            ml.client("inference").invoke_inference_service(
                AlgoType="object-detection", ServiceName="objectDetektion", ContentType="image/png",
                Body=b"\x89PNG")
        text = str(failed.value)
        assert "GG-ML-INF-object-detection-objectDetektion" in text, text
        assert "it serves arn:aws:lambda:{}:aws:function:GG-ML-INF-object-detection-objectDetection".format(
            info["region"]) in text, text
    finally:
        proc.stop()


def test_no_fast_path_offers_only_the_v1_exchange_and_the_sdk_uses_it(tmp_path, model_dir, sdk_env):
    """`serve --no-fast-path`: no socket beside the client file, none advertised, and our SDK is
    answered over the V1 exchange."""
    import json

    import greengrass_machine_learning_sdk as ml
    from tests import images

    proc, info, env = service_process.start_serve(tmp_path, model_dir, extra_args=["--no-fast-path"])
    sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
    try:
        assert "fast" not in info, info
        assert not [n for n in os.listdir(str(tmp_path)) if n.endswith(".sock")]
        answer = ml.client("inference").invoke_inference_service(
            AlgoType="object-detection", ServiceName="objectDetection", ContentType="image/jpeg",
            Body=images.jpeg())
        assert "prediction" in json.loads(answer["Body"].read())
        connections = service_process.healthz(info["port"], info["token"])[1]["connections"]
        assert connections["fast"] is False and connections["fast_frames"] == 0
    finally:
        assert proc.stop() == 0, proc.log()
