"""Untrusted configuration stays small (issue 9, point 5): parameter files and model.yaml are
size-capped and parsed without alias expansion, values range-checked, messages cut; the memory
limit holds while a model loads, and a slow reload never delays replacing a crashed worker.

Attacked for real: `serve` processes, the DLR fixture model, SIGHUP reloads, kill -9.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connector import config_files
from connector.errors import ConfigFileError
from connector.errors import ParameterError
from connector.ipc import IPCClient, protocol
from connector.params import MAX_TIMEOUT_SECONDS, load_parameters, parse_parameters
from connector.errors import MemoryLimitError
from connector.supervision.supervisor import WorkerSupervisor
from tests import images
from tests.dlr_fixture.build import RED, blank_image, draw_box, memory_pixel, sleep_pixel
from tests.service_process import ROOT, clean_env, healthz, params_file, start_serve

# About 400 bytes that yaml.safe_load expands to 10^9 list items (the "billion laughs").
BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
    "{}: &{} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]".format(
        chr(ord("a") + i), chr(ord("a") + i), p=chr(ord("a") + i - 1)) for i in range(1, 9)]) + "\n"


def red_png() -> bytes:
    return images.png(draw_box(blank_image(), RED, 10, 20, 110, 220))


def one_line_exit_2(args, env, timeout=30) -> str:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "connector", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    text = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in text, text[:2000]
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines[:5]
    assert time.monotonic() - started < timeout
    return lines[0]


def test_the_bomb_is_what_it_claims():
    assert len(BOMB) < 500 and BOMB.count("&") == 9


def test_alias_bomb_in_a_parameter_file_is_refused_at_once(tmp_path):
    bomb = tmp_path / "params.yaml"
    bomb.write_text(BOMB)
    started = time.monotonic()
    with pytest.raises(ParameterError, match="aliases") as e:
        load_parameters(str(bomb), {})
    assert time.monotonic() - started < 1.0 and len(str(e.value)) < 300
    line = one_line_exit_2(["serve", "--config", str(bomb), "--port", "0"],
                           clean_env(tmp_path / "ipc.json"))
    assert "aliases" in line and len(line) < 300


def test_oversized_deep_or_binary_files_are_refused_with_the_rule(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("MLModelResourceId: " + "x" * config_files.DEFAULT_MAX_BYTES + "\n")
    with pytest.raises(ConfigFileError, match="larger than 65536 bytes"):
        config_files.load_file(str(big))
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigFileError, match="nested deeper than 32 levels"):
        config_files.load_file(str(deep))
    anchors_only = tmp_path / "anchors.yaml"
    anchors_only.write_text("a: &x 1\nb: 2\n")  # an anchor without an alias is harmless
    assert config_files.load_file(str(anchors_only)) == {"a": 1, "b": 2}
    with pytest.raises(ConfigFileError, match="cannot read"):
        config_files.load_file(str(tmp_path) + "/nul\0byte.yaml")


def test_values_are_range_checked_and_quoted_short():
    base = {"MLModelDestinationPath": "/m", "MLModelResourceId": "r", "LocalInferenceServiceName": "svc",
            "LocalInferenceServiceMemoryLimitKB": "500000"}
    with pytest.raises(ParameterError) as e:
        parse_parameters(dict(base, LocalInferenceServiceTimeoutSeconds="99999999999"))
    assert "maximum of {}".format(MAX_TIMEOUT_SECONDS) in str(e.value)
    assert "LocalInferenceServiceTimeoutSeconds" in str(e.value) and "^[1-9][0-9]*$" in str(e.value)
    assert parse_parameters(dict(base, LocalInferenceServiceTimeoutSeconds=str(MAX_TIMEOUT_SECONDS))
                            ).timeout_seconds == MAX_TIMEOUT_SECONDS
    with pytest.raises(ParameterError, match="maximum"):
        parse_parameters(dict(base, LocalInferenceServiceMemoryLimitKB="9" * 30))
    with pytest.raises(ParameterError) as e:
        parse_parameters(dict(base, LocalInferenceServiceName="x" * 100_000))
    assert len(str(e.value)) < 300 and "100002 characters" in str(e.value)


def _model_copy(model_dir: Path, target: Path, model_yaml: "str | None" = None) -> Path:
    shutil.copytree(str(model_dir), str(target))
    if model_yaml is not None:
        (target / "model.yaml").write_text(model_yaml)
    return target


def test_model_yaml_bomb_fails_start_and_reload_small_and_fast(tmp_path, model_dir):
    bombed = _model_copy(model_dir, tmp_path / "bombed", BOMB)
    cfg = params_file(tmp_path / "bombed.json", bombed)
    line = one_line_exit_2(["serve", "--config", str(cfg), "--port", "0"],
                           clean_env(tmp_path / "ipc-start.json"))
    assert "aliases" in line and len(line) < 800
    # At reload: the old model keeps serving, the error is short, the probe stays small.
    good = _model_copy(model_dir, tmp_path / "good")
    current = tmp_path / "current"
    os.symlink(str(good), str(current))
    proc, info, env = start_serve(tmp_path, current, env_extra={"CONNECTOR_MODEL_WATCH_SECONDS": "0"})
    try:
        port, token = info["port"], info["token"]
        pid = healthz(port, token)[1]["worker"]["worker_pid"]
        (good / "model.yaml").write_text(BOMB)
        proc.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while healthz(port, token)[1]["worker"]["reload_failures"] < 1:
            assert time.monotonic() < deadline, proc.log()[-3000:]
            time.sleep(0.05)
        status, private = healthz(port, token)
        assert "aliases" in private["worker"]["last_error"] and len(private["worker"]["last_error"]) < 700
        assert private["worker"]["worker_pid"] == pid and private["worker"]["state"] == "ready"
        assert len(json.dumps(healthz(port)[1])) < 2000
        assert max(len(line) for line in proc.log().splitlines()) < 2000
        (good / "model.yaml").unlink()
        proc.popen.send_signal(signal.SIGHUP)  # fixed: the reload works and clears last_error
        deadline = time.monotonic() + 30
        # Every worker reloads (one after another), each clearing its own error.
        while healthz(port, token)[1]["worker"]["reloads"] < private["worker"]["workers"]:
            assert time.monotonic() < deadline, proc.log()[-3000:]
            time.sleep(0.05)
        while "last_error" in healthz(port, token)[1]["worker"]:
            assert time.monotonic() < deadline, proc.log()[-3000:]
            time.sleep(0.05)
    finally:
        assert proc.stop() == 0, proc.log()[-3000:]


def test_the_memory_limit_holds_while_a_model_loads(tmp_path, model_dir):
    # The warm-up inference (part of loading) sees an all-zero image; this mean turns it into the
    # fixture's memory trigger: 20 x 16 MiB allocated and touched during the load.
    hungry = _model_copy(model_dir, tmp_path / "hungry",
                         "mean: [{}, {}, {}]\n".format(*(-v for v in memory_pixel(20))))
    started = time.monotonic()
    with pytest.raises(MemoryLimitError, match=r"used \d+ KB while loading the model, more than "
                                               r"LocalInferenceServiceMemoryLimitKB=200000"):
        WorkerSupervisor(str(hungry), memory_limit_kb=200_000, service_name="load-limit")
    assert time.monotonic() - started < 30


def test_a_slow_reload_never_delays_replacing_a_crashed_worker(tmp_path, model_dir):
    fast = _model_copy(model_dir, tmp_path / "fast")
    # Loading this version takes 20 s: its warm-up hits the fixture's sleep trigger.
    slow = _model_copy(model_dir, tmp_path / "slow",
                       "mean: [{}, {}, {}]\n".format(*(-v for v in sleep_pixel(200))))
    current = tmp_path / "current"
    os.symlink(str(fast), str(current))
    proc, info, env = start_serve(tmp_path, current, env_extra={"CONNECTOR_MODEL_WATCH_SECONDS": "0"})
    try:
        port, token = info["port"], info["token"]
        before = healthz(port, token)[1]
        tmp_link = str(current) + ".new"
        os.symlink(str(slow), tmp_link)
        os.replace(tmp_link, str(current))
        proc.popen.send_signal(signal.SIGHUP)
        time.sleep(2.0)  # the reload worker has read the slow version and sleeps in its warm-up
        os.symlink(str(fast), tmp_link)
        os.replace(tmp_link, str(current))  # so a replacement loads the fast one
        os.kill(before["worker"]["worker_pid"], signal.SIGKILL)
        killed = time.monotonic()
        while True:
            doc = healthz(port, token)[1]
            if doc["worker"]["state"] == "ready" and doc["worker"]["worker_pid"] not in (None, before["worker"]["worker_pid"]):
                break
            assert time.monotonic() - killed < 12, "no replacement while the reload ran: {}\n{}".format(
                doc, proc.log()[-3000:])
            time.sleep(0.05)
        assert doc["worker"]["reloads"] == 0 and doc["worker"]["crashes"] == 1  # the reload is still loading
        arn = protocol.inference_function_arn(info["region"], "object-detection", "objectDetection")
        client = IPCClient("127.0.0.1", port, info["token"], timeout=30)
        out = client.get_work_result(arn, client.post_work(
            arn, red_png(), protocol.encode_client_context({"Content-Type": "image/png"})))
        assert out.func_err is None, out.payload
    finally:
        proc.stop(timeout=40)
