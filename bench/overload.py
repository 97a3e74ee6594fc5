#!/usr/bin/env python3
"""Overload benchmark: where the worker's time goes when more callers come than it can serve.

A real `python -m connector serve` (the DLR test fixture model, whose images here each take
--image-seconds of worker time through the fixture's sleep trigger) gets --clients callers that
call back to back for --duration seconds, each waiting at most LocalInferenceServiceTimeoutSeconds
(--timeout). Printed:

* the callers' outcomes: answered, timed out (with the documented message), other failures;
* the worker's time: answered requests (time callers read) against results computed after their
  callers had given up (/healthz `late_results`), and the share of the two that went to callers
  that still waited;
* throughput against the worker's capacity measured in the same run (1 / the time one image
  takes when nothing else runs): the baseline this run is compared with.

Exit status 1 when a timed-out caller did not get the documented message, /healthz does not count
every timeout, or the worker crashed; 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connector.ipc import IPCClient, IPCError, protocol  # noqa: E402
from tests import images  # noqa: E402
from tests.dlr_fixture.build import (RED, blank_image, build_dlr_model, draw_box,  # noqa: E402
                                     set_trigger, sleep_pixel)
from tests.service_process import counters, healthz, start_serve  # noqa: E402

CONTEXT = protocol.encode_client_context({"Content-Type": "image/png"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--timeout", type=int, default=10, help="LocalInferenceServiceTimeoutSeconds")
    parser.add_argument("--image-seconds", type=float, default=0.5)
    args = parser.parse_args(argv)
    tenths = max(1, min(255, int(round(args.image_seconds * 10))))
    work = Path(tempfile.mkdtemp(prefix="overload-"))
    work.chmod(0o700)
    model = build_dlr_model(work / "model")
    body = images.png(set_trigger(draw_box(blank_image(), RED, 64, 128, 256, 384), sleep_pixel(tenths)))
    proc, info, _ = start_serve(work, Path(model), timeout=args.timeout)
    port, token = info["port"], info["token"]
    arn = protocol.inference_function_arn(info["region"], "object-detection", "objectDetection")
    try:
        # baseline: one image alone, a few times (the worker's capacity)
        client = IPCClient("127.0.0.1", port, token, timeout=60)
        alone = []
        for _ in range(3):
            started = time.monotonic()
            out = client.get_work_result(arn, client.post_work(arn, body, CONTEXT))
            assert out.func_err is None, out.payload
            alone.append(time.monotonic() - started)
        per_image = min(alone)
        before = counters(healthz(port, token)[1])

        outcomes = {"answered": 0, "timed out": 0, "other": 0}
        wrong_message = []
        lock = threading.Lock()
        stop_at = time.monotonic() + args.duration
        documented = "no answer within LocalInferenceServiceTimeoutSeconds={} s".format(args.timeout)

        def caller():
            c = IPCClient("127.0.0.1", port, token, timeout=args.timeout + 30)
            while time.monotonic() < stop_at:
                try:
                    out = c.get_work_result(arn, c.post_work(arn, body, CONTEXT))
                    kind = "answered" if out.func_err is None else "timed out"
                    text = protocol.error_message_of(out.payload) if out.func_err else ""
                except IPCError as e:
                    kind, text = "other", str(e)
                with lock:
                    if kind == "timed out" and documented not in text:
                        wrong_message.append(text)
                        kind = "other"
                    outcomes[kind] += 1

        started = time.monotonic()
        threads = [threading.Thread(target=caller) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        time.sleep(args.image_seconds * 2)  # let the worker finish what it holds
        after = counters(healthz(port, token)[1])
        delta = {k: after.get(k, 0) - before.get(k, 0)
                 for k in ("timeouts", "late_results", "shed", "abandoned", "crashes", "restarts")}

        useful = outcomes["answered"] * per_image
        wasted = delta["late_results"] * per_image
        share = useful / (useful + wasted) if useful + wasted else 1.0
        capacity = elapsed / per_image
        print("overload: {} clients for {:.0f} s, {:.2f} s of worker time an image, timeout {} s".format(
            args.clients, elapsed, per_image, args.timeout))
        print()
        print("callers        count")
        print("-------------  -----")
        for key, value in outcomes.items():
            print("{:<13}  {:>5}".format(key, value))
        print()
        print("worker time                        images  seconds")
        print("---------------------------------  ------  -------")
        print("answered (callers still waited)    {:>6}  {:>7.1f}".format(outcomes["answered"], useful))
        print("late (computed after give-up)      {:>6}  {:>7.1f}".format(delta["late_results"], wasted))
        print("shed before start (no time spent)  {:>6}  {:>7.1f}".format(delta["shed"], 0.0))
        print()
        print("share of worker time for waiting callers: {:.1%}".format(share))
        print("throughput: {:.2f} answers/s, capacity (baseline, same run) {:.2f}/s, ratio {:.2f}".format(
            outcomes["answered"] / elapsed, 1 / per_image, outcomes["answered"] / capacity))
        print("/healthz: {}".format(json.dumps(delta)))
        failed = bool(wrong_message) or delta["timeouts"] != outcomes["timed out"] \
            or delta["crashes"] or outcomes["other"]
        if wrong_message:
            print("timeouts without the documented message, e.g.:", wrong_message[:2])
        if delta["timeouts"] != outcomes["timed out"]:
            print("/healthz counted {} timeouts, callers saw {}".format(delta["timeouts"],
                                                                       outcomes["timed out"]))
        return 1 if failed else 0
    finally:
        proc.stop()


if __name__ == "__main__":
    sys.exit(main())
