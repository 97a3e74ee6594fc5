"""Load: one real `serve` process, many concurrent clients, every answer checked against its own image.

Each request carries a unique picture (one solid box of a seeded random colour, position and size on
a grey 512x512 canvas), which the DLR fixture model detects exactly as
``[class, 1.0, x0/512, y0/512, x1/512, y1/512]``; the corners are multiples of 1/512, so the floats
are exact and the whole answer can be compared with ``==``. An answer delivered to the wrong caller
would therefore show another box, and is counted as wrong. Half the threads call through the ML SDK,
half through the raw IPC client (post_work + get_work_result), and a few truncated PNGs are mixed in:
they must be refused with the decoder's error without disturbing anyone else.

Checked: zero lost (every call returned something), zero wrong, zero hangs (each call has a socket
timeout and the whole run a deadline, both generous: this must pass on a busy 2-core machine, so no
timing is asserted), and afterwards /healthz shows the same worker with no restart, crash, timeout
or memory-limit kill, the refusals counted, and the server exits 0 on SIGTERM.
"""
from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pytest

from connector.ipc import IPCClient
from connector.ipc import protocol
from tests import images
from tests.dlr_fixture.build import BLUE, GREEN, RED, blank_image, draw_box
from tests.service_process import ROOT, healthz, start_serve

sys.path.insert(0, str(ROOT / "ml_sdk"))
import greengrass_machine_learning_sdk as ml  # noqa: E402

SIDE = 512
COLOURS = ((RED, 0), (GREEN, 1), (BLUE, 2))
REQUESTS = 400          # good requests
BAD_EVERY = 33          # one truncated PNG after every 33 good ones (12 in all)
THREADS = 16            # even threads use the SDK, odd ones the raw IPC client
CALL_TIMEOUT_S = 120.0  # socket timeout of every call: a hang becomes an error, never a stuck test
RUN_TIMEOUT_S = 240.0   # the whole run (pytest.ini's per-test timeout is 300 s)
SERVICE_TIMEOUT_S = 60  # LocalInferenceServiceTimeoutSeconds: queueing on a slow machine is no failure


def good_jobs(count: int, seed: int = 20240611) -> "list[tuple[bytes, list]]":
    """(PNG bytes, expected prediction) for `count` distinct single-box images."""
    rng = np.random.default_rng(seed)
    seen, jobs = set(), []
    while len(jobs) < count:
        colour, cls = COLOURS[int(rng.integers(len(COLOURS)))]
        w, h = (int(v) for v in rng.integers(8, 200, 2))
        x0, y0 = int(rng.integers(0, SIDE - w + 1)), int(rng.integers(0, SIDE - h + 1))
        key = (cls, x0, y0, x0 + w, y0 + h)
        if key in seen:
            continue
        seen.add(key)
        body = images.png(draw_box(blank_image(), colour, x0, y0, x0 + w, y0 + h))
        jobs.append((body, [[cls, 1.0, x0 / SIDE, y0 / SIDE, (x0 + w) / SIDE, (y0 + h) / SIDE]]))
    return jobs


@pytest.mark.parametrize("workers", ["1", "3"])
def test_many_concurrent_clients_lose_nothing_and_mix_nothing_up(tmp_path, model_dir, sdk_env, workers):
    """With one worker and with several (CONNECTOR_INFERENCE_WORKERS), whose answers overlap."""
    good = good_jobs(REQUESTS)
    jobs = []  # (index, body, expected prediction or None for a bad request)
    for i, (body, expected) in enumerate(good):
        jobs.append((len(jobs), body, expected))
        if i % BAD_EVERY == BAD_EVERY - 1:
            jobs.append((len(jobs), body[: len(body) // 2], None))
    bad_count = sum(1 for job in jobs if job[2] is None)
    assert len(set(body for _, body, _ in jobs)) == len(jobs)  # every image is its own

    proc, info, env = start_serve(tmp_path, model_dir, timeout=SERVICE_TIMEOUT_S,
                                  env_extra={"CONNECTOR_INFERENCE_WORKERS": workers})
    stopped = False
    try:
        sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
        status, before = healthz(info["port"], info["token"])
        assert status == 200 and before["worker"]["state"] == "ready", before
        arn = protocol.inference_function_arn(info["region"], "object-detection", "objectDetection")
        context = protocol.encode_client_context({"Content-Type": "image/png"})

        local = threading.local()

        def call(job):
            index, body, _ = job
            # A thread keeps its transport: even pool threads the SDK, odd ones the raw IPC client.
            if not hasattr(local, "via"):
                number = int(threading.current_thread().name.rsplit("_", 1)[-1])
                if number % 2 == 0:
                    local.via, local.client = "sdk", ml.client("inference", timeout=CALL_TIMEOUT_S)
                else:
                    local.via, local.client = "ipc", IPCClient(host="127.0.0.1", port=info["port"],
                                                                token=info["token"], timeout=CALL_TIMEOUT_S)
            if local.via == "sdk":
                try:
                    resp = local.client.invoke_inference_service(
                        AlgoType="object-detection", ServiceName="objectDetection",
                        ContentType="image/png", Body=body)
                except ml.GreengrassInferenceException as e:
                    return index, "sdk", "error", str(e)
                return index, "sdk", "ok", resp["Body"].read().decode("utf-8")
            invocation = local.client.post_work(arn, body, context)
            out = local.client.get_work_result(arn, invocation)
            if out.func_err:
                return index, "ipc", "error:" + out.func_err, protocol.error_message_of(out.payload)
            return index, "ipc", "ok", json.loads(out.payload.decode("utf-8"))["Body"]

        pool = ThreadPoolExecutor(THREADS, thread_name_prefix="load")
        futures = []
        try:
            futures.extend(pool.submit(call, job) for job in jobs)
            done, not_done = wait(futures, timeout=RUN_TIMEOUT_S)
        finally:
            for future in futures:
                future.cancel()  # what has not started yet; a stuck call ends at its socket timeout
            pool.shutdown(wait=False)

        lost, wrong, vias = [], [], {"sdk": 0, "ipc": 0}
        for job, future in zip(jobs, futures):
            index, body, expected = job
            if future not in done:
                lost.append((index, "no answer after {} s".format(RUN_TIMEOUT_S)))
                continue
            if future.exception() is not None:
                lost.append((index, repr(future.exception())))
                continue
            got_index, via, outcome, text = future.result()
            assert got_index == index
            vias[via] += 1
            if expected is None:
                if not (outcome in ("error", "error:Handled") and "truncated" in text):
                    wrong.append((index, via, "bad request answered {} {!r}".format(outcome, text[:200])))
            elif outcome != "ok":
                wrong.append((index, via, "{}: {}".format(outcome, text[:200])))
            else:
                doc = json.loads(text)
                if doc != {"prediction": expected}:
                    wrong.append((index, via, "expected {}, got {}".format(expected, doc)))
        assert not lost, "{} of {} requests lost, e.g. {}\n{}".format(
            len(lost), len(jobs), lost[:5], proc.log()[-4000:])
        assert not wrong, "{} of {} answers wrong, e.g. {}".format(len(wrong), len(jobs), wrong[:5])
        assert vias["sdk"] > 0 and vias["ipc"] > 0, vias  # both transports were exercised

        status, after = healthz(info["port"], info["token"])
        assert status == 200, after
        assert after["worker"]["state"] == "ready" and after["worker"]["worker_pid"] == before["worker"]["worker_pid"], after
        for section, counter in (("worker", "restarts"), ("worker", "crashes"), ("board", "timeouts"),
                                 ("worker", "memory_limit_exceeded")):
            assert after[section][counter] == 0, (counter, after)
        assert after["requests"]["refused"] == bad_count, after
        if workers != "1":
            # Lists are only in the whole document (with the host's token).
            after = healthz(info["port"], info["token"])[1]
            assert len(set(after["worker"]["worker_pids"])) == 3 and after["worker"]["worker_pid"] in after["worker"]["worker_pids"], after
            # Every worker answered a share (16 callers keep all three busy).
            assert all(n > 0 for n in after["worker"]["worker_requests"]), after
            assert sum(after["worker"]["worker_requests"]) == len(jobs), after  # bad ones are refused there
        stopped = True
        assert proc.stop() == 0, proc.log()
    finally:
        if not stopped:
            proc.stop()
