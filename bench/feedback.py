#!/usr/bin/env python3
"""Does feeding the ML Feedback service slow inference down? Feedback on vs off, same run, interleaved.

Two real `python -m connector serve` processes with the same model start side by side:

* **off**: no MLFeedbackConnectorConfigId;
* **on**: MLFeedbackConnectorConfigId set and the feedback service in the same process, keeping every
  sample (no strategy) in a local directory, so each request costs a spool write (fsync), a copy to
  the directory with its JSON sidecar and two MQTT attempts: the heaviest feedback path that needs no
  network.

Requests alternate on, off, off, on, ... image by image (ABBA, so neither side always goes first)
from one client thread, through the IPC (post_work + get_work_result, what the SDK does). The table
gives latency percentiles per side and the ratio on/off; the last line says how many samples the
feedback service delivered. Exit status 1 when a request failed or the samples did not all arrive.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402

from connector.ipc import IPCClient, protocol  # noqa: E402
from connector.demos import DEFAULT_MODEL, model_path  # noqa: E402
from shapes_dataset import COMMON_SIZES, encode_mixed, make_sample  # noqa: E402
from tests.service_process import healthz, start_serve  # noqa: E402

ARN = protocol.inference_function_arn("us-east-1", "object-detection", "objectDetection")


def images(count: int, seed: int = 11) -> List[tuple]:
    out = []
    for i in range(count):
        w, h = COMMON_SIZES[i % len(COMMON_SIZES)]
        rgb, _ = make_sample(seed + i, w, h)
        out.append(encode_mixed(rgb, i))
    return out


def request(client: IPCClient, body: bytes, content_type: str) -> float:
    started = time.perf_counter()
    context = protocol.encode_client_context({"Content-Type": content_type})
    invocation = client.post_work(ARN, body, context)
    result = client.get_work_result(ARN, invocation)
    elapsed = time.perf_counter() - started
    if result.func_err:
        raise RuntimeError("request failed: {}".format(protocol.error_message_of(result.payload)))
    return elapsed * 1000


def row(name: str, ms: List[float]) -> List[str]:
    return [name, str(len(ms))] + ["{:.2f}".format(v) for v in (
        float(np.mean(ms)), *(float(np.percentile(ms, q)) for q in (50, 90, 99)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default=model_path(DEFAULT_MODEL))
    parser.add_argument("--requests", type=int, default=200, help="requests per side (default 200)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="feedback-bench-"))
    samples = work / "samples"
    feedback = work / "feedback.json"
    feedback.write_text(json.dumps({
        "FeedbackConfigurationMap": {"bench": {"local-directory": str(samples), "content-type": "image/jpeg"}},
        "FeedbackSpoolDirectory": str(work / "spool")}))
    procs = []
    try:
        (work / "off").mkdir()
        (work / "on").mkdir()
        off, off_info, _ = start_serve(work / "off", Path(args.model_dir), timeout=30)
        procs.append(off)
        on, on_info, _ = start_serve(work / "on", Path(args.model_dir), {"MLFeedbackConnectorConfigId": "bench"},
                                     timeout=30, extra_args=["--feedback-config", str(feedback)])
        procs.append(on)
        clients = {"off": IPCClient.from_client_file(str(work / "off" / "ipc.json")),
                   "on": IPCClient.from_client_file(str(work / "on" / "ipc.json"))}
        pictures = images(args.images)
        for body, ctype in pictures:  # warm-up, both sides
            for client in clients.values():
                request(client, body, ctype)
        latency: Dict[str, List[float]] = {"on": [], "off": []}
        for i in range(args.requests):
            body, ctype = pictures[i % len(pictures)]
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            for side in order:
                latency[side].append(request(clients[side], body, ctype))
        expected = args.requests + len(pictures)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            delivered = healthz(on_info["port"], on_info["token"])[1].get("feedback", {}).get("delivered", 0)
            if delivered >= expected:
                break
            time.sleep(0.2)
        headers = ["feedback", "requests", "mean ms", "p50 ms", "p90 ms", "p99 ms"]
        rows = [row("off", latency["off"]), row("on", latency["on"])]
        ratios = ["on/off", ""] + ["{:.3f}x".format(float(a) / float(b)) for a, b in zip(rows[1][2:], rows[0][2:])]
        widths = [max(len(r[i]) for r in [headers] + rows + [ratios]) for i in range(len(headers))]
        for r in [headers] + rows + [ratios]:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        health = healthz(on_info["port"], on_info["token"])[1]
        print("feedback service: {} of {} samples delivered to {}; feeder {}".format(
            health["feedback"]["delivered"], expected, samples, health["feeder"]))
        return 0 if health["feedback"]["delivered"] >= expected and not health["feeder"]["feed_failed"] else 1
    finally:
        for proc in procs:
            proc.stop()
        if args.keep:
            print("work directory:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
