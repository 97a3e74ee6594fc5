"""The operator's view: /metrics in the Prometheus text format and the per-request log line."""
from __future__ import annotations

import http.client
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import greengrass_machine_learning_sdk as ml
from connector.service import metrics
from tests import images
from tests.dlr_fixture.build import CRASH_PIXEL, RED, blank_image, draw_box, set_trigger, sleep_pixel
from tests.service_process import healthz, scaled, start_serve

SAMPLE = re.compile(r'^(ggml_[a-z_]+)\{((?:[a-z_]+="[^"]*",?)+)\} (-?[0-9.e+-]+|\+Inf)$')


def parse(text):
    """Strict reading of the exposition text: every sample's family has HELP and TYPE first."""
    declared, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            declared.setdefault(line.split()[2], set()).add("HELP")
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge", "histogram")
            declared.setdefault(name, set()).add("TYPE")
        else:
            m = SAMPLE.match(line)
            assert m, "not a sample line: {!r}".format(line)
            name, labels, value = m.groups()
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in declared else name
            assert declared.get(family) == {"HELP", "TYPE"}, line
            samples[(name, tuple(sorted(re.findall(r'([a-z_]+)="([^"]*)"', labels))))] = float(value)
    return samples


def value(samples, name, **labels):
    want = dict(labels, service="objectDetection")
    for (n, ls), v in samples.items():
        if n == name and dict(ls) == want:
            return v
    raise KeyError((name, labels))


def test_histogram_buckets_are_cumulative_and_inclusive():
    h = metrics.Histogram((0.1, 1.0))
    for s in (0.1, 0.5, 2.0):
        h.observe(s)
    assert h.cumulative() == [("0.1", 1), ("1.0", 2), ("+Inf", 3)]
    assert h.count == 3 and abs(h.sum - 2.6) < 1e-9


def test_render_escapes_label_values():
    text = metrics.render('we"ird\\name', metrics.RequestMetrics(), {})
    assert 'service="we\\"ird\\\\name"' in text


def scrape(port, token=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, "/metrics", headers={"Authorization": token} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read().decode("utf-8")
    finally:
        conn.close()


@pytest.fixture()
def served(tmp_path, model_dir, sdk_env):
    proc, info, env = start_serve(tmp_path, model_dir, timeout=1)
    sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
    yield proc, info
    proc.stop()


def invoke(body):
    return ml.client("inference").invoke_inference_service(
        AlgoType="object-detection", ServiceName="objectDetection", ContentType="image/png", Body=body)


def test_metrics_count_outcomes_phases_and_worker_events(served):
    proc, info = served
    box = draw_box(blank_image(), RED, 20, 20, 120, 120)
    for _ in range(3):
        invoke(images.png(box))
    with pytest.raises(ml.GreengrassInferenceException):
        invoke(b"not an image")
    with pytest.raises(ml.GreengrassInferenceException):
        invoke(images.png(set_trigger(box.copy(), CRASH_PIXEL)))
    with pytest.raises((ml.GreengrassInferenceException, ml.GreengrassDependencyException)):
        invoke(images.png(set_trigger(box.copy(), sleep_pixel(30))))  # 3 s, over the 1 s timeout
    # The host answers the timed-out caller at its deadline; the service finishes (and counts) that
    # request when the worker is stopped for hanging, a moment later.
    deadline = time.monotonic() + scaled(20)
    while True:
        status, content_type, text = scrape(info["port"], info["token"])
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        s = parse(text)
        if value(s, "ggml_request_seconds_count", phase="total") == 6 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert value(s, "ggml_requests_total", outcome="ok") == 3
    assert value(s, "ggml_requests_total", outcome="refused") == 1
    assert value(s, "ggml_requests_total", outcome="failed") == 1
    assert value(s, "ggml_requests_total", outcome="timeout") == 1
    for phase in ("queue", "decode", "inference"):
        assert value(s, "ggml_request_seconds_count", phase=phase) == 3  # answered requests
        assert value(s, "ggml_request_seconds_sum", phase=phase) > 0 or phase == "queue"
        assert value(s, "ggml_request_seconds_bucket", phase=phase, le="+Inf") == 3
    assert value(s, "ggml_request_seconds_count", phase="total") == 6
    assert value(s, "ggml_worker_crashes_total") == 1
    assert value(s, "ggml_worker_restarts_total") >= 1
    assert value(s, "ggml_timeouts_total") >= 1
    assert value(s, "ggml_worker_memory_kills_total") == 0
    assert value(s, "ggml_model_reloads_total") == 0
    assert value(s, "ggml_queue_depth") == 0
    assert value(s, "ggml_resident_memory_bytes", process="supervisor") > 10 * 2**20
    # Every counter of the detailed health is exported, with the same value (read until the
    # two agree: the hung worker's replacement may still be counted between the two reads).
    deadline = time.monotonic() + scaled(10)
    while True:
        _, health = healthz(info["port"], info["token"])
        s = parse(scrape(info["port"], info["token"])[2])
        differ = {key: (value(s, "ggml_" + name), health[section][key])
                  for section, key, name, _ in metrics.COUNTERS if section in health
                  if value(s, "ggml_" + name) != health[section][key]}
        if not differ or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not differ, differ


def test_metrics_need_a_valid_token(served):
    proc, info = served
    assert scrape(info["port"])[0] == 401
    assert scrape(info["port"], "wrong-token")[0] == 403
    assert scrape(info["port"], info["token"], method="POST")[0] == 405
    assert scrape(info["port"], info["token"])[0] == 200
    assert scrape(info["port"], "Bearer " + info["token"])[0] == 200  # Prometheus' authorization
    assert scrape(info["port"], "Bearer wrong-token")[0] == 403


def test_detailed_health_takes_the_token_as_metrics_does(served):
    """A monitoring system sends one Authorization header to /metrics and /healthz alike."""
    proc, info = served
    documents = {name: healthz(info["port"], token)[1] for name, token in (
        ("none", None), ("raw", info["token"]), ("bearer", "Bearer " + info["token"]),
        ("wrong", "Bearer wrong-token"))}
    details = set(documents["raw"]) - set(documents["none"])  # what only a valid token sees
    assert details, documents["raw"]
    assert set(documents["bearer"]) == set(documents["raw"])
    assert set(documents["wrong"]) == set(documents["none"])


def test_one_request_log_line_per_invocation(served):
    proc, info = served
    invoke(images.png(draw_box(blank_image(), RED, 20, 20, 120, 120)))
    with pytest.raises(ml.GreengrassInferenceException):
        invoke(b"junk")
    proc.stop()
    lines = [l for l in proc.log().splitlines() if "connector.requests" in l]
    assert len(lines) == 2, lines
    ok = re.search(r"inv=(\S+) INFO connector.requests: request (\S+): (\d+) bytes, ok, [0-9.]+ ms", lines[0])
    assert ok and ok.group(1) == ok.group(2) and int(ok.group(3)) > 100, lines[0]
    assert re.search(r"request \S+: 4 bytes, refused, [0-9.]+ ms", lines[1]), lines[1]


def test_request_log_can_be_turned_down(tmp_path, model_dir, sdk_env):
    proc, info, env = start_serve(tmp_path, model_dir, env_extra={"CONNECTOR_REQUEST_LOG_LEVEL": "WARNING"})
    sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
    try:
        invoke(images.png(draw_box(blank_image(), RED, 20, 20, 120, 120)))
    finally:
        proc.stop()
    assert "connector.requests" not in proc.log()
    assert "INFO connector.standalone.serve" in proc.log()  # the rest of the INFO log is unchanged


def test_metrics_with_several_workers_time_each_request_on_the_worker_that_served_it(
        tmp_path, model_dir, sdk_env):
    proc, info, env = start_serve(tmp_path, model_dir, env_extra={"CONNECTOR_INFERENCE_WORKERS": "2"})
    sdk_env.setenv("GG_ML_IPC_FILE", env["GG_ML_IPC_FILE"])
    try:
        box = draw_box(blank_image(), RED, 20, 20, 120, 120)
        quick, slow = images.png(box), images.png(set_trigger(box.copy(), sleep_pixel(5)))  # 0.5 s
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: invoke(quick), range(8)))
        s = parse(scrape(info["port"], info["token"])[2])
        # slow requests on two workers (serve takes three at a time): one waits ~0.5 s for a free one
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: invoke(slow), range(4)))
        waited = parse(scrape(info["port"], info["token"])[2])
    finally:
        proc.stop()
    assert value(s, "ggml_requests_total", outcome="ok") == 8
    for phase in ("decode", "inference"):
        assert value(s, "ggml_request_seconds_count", phase=phase) == 8
        assert value(s, "ggml_request_seconds_sum", phase=phase) > 0
    queued = (value(waited, "ggml_request_seconds_sum", phase="queue")
              - value(s, "ggml_request_seconds_sum", phase="queue"))
    assert queued > 0.3, "the wait for a free worker belongs to the queue phase"
    assert value(s, "ggml_resident_memory_bytes", process="worker") > 20 * 2**20  # both workers
