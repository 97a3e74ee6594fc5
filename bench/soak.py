#!/usr/bin/env python3
"""Soak benchmark: a real `python -m connector serve` under steady load through the ML SDK.

Phases, all in one run and on the same images:

1. baseline - the model in this process (connector.model.engine.Engine), each image decoded, detected and
   rendered several times: the raw cost per image, and the reference answer for every image;
2. start    - `python -m connector serve` on a free loopback port (as tests/service_process.py does);
3. warm-up  - every image once through the SDK;
4. sequential - every image --rounds times through the SDK, one at a time: latency against the raw
   time of the same image is the per-request overhead of the service (IPC, worker hop);
5. soak     - --concurrency threads send requests for --duration seconds, RSS of the serve process
   and of its worker process(es) sampled every --sample-every seconds;
6. stop     - SIGTERM, and the exit status.

Every answer must be byte-identical to the in-process engine's answer for that image. The exit status
is 1 when any request failed or was wrong, the worker restarted, crashed or timed out, the service did
not start, or it did not stop with status 0; 2 for bad arguments; 0 otherwise. See bench/README.md.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "ml_sdk"))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402

from connector.model.engine import Engine  # noqa: E402
from connector.demos import DEFAULT_MODEL, model_path  # noqa: E402
from shapes_dataset import COMMON_SIZES, encode_mixed, make_sample  # noqa: E402
from tests.service_process import counters as health_counters, healthz, start_serve  # noqa: E402

GREENGRASS_VARS = ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "MY_FUNCTION_ARN", "GG_DAEMON_PORT",
                   "GGC_MAX_INTERFACE_VERSION", "GG_ML_INFERENCE_FUNCTION_ARNS")


# --------------------------------------------------------------------------- helpers

def percentile(values: List[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def table(headers: List[str], rows: List[List[object]]) -> str:
    """A plain text table, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if n and _numeric(c) else c.ljust(w)
                               for c, w in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip("%x").replace("+", ""))
        return True
    except ValueError:
        return False


def status_kb(pid: int, field: str) -> Optional[int]:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), None when the process is gone."""
    try:
        with open("/proc/{}/status".format(pid)) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def children(pid: int) -> List[int]:
    """Direct children, from /proc/<pid>/task/*/children, else by scanning /proc/*/stat ppids."""
    found: List[int] = []
    try:
        for task in os.listdir("/proc/{}/task".format(pid)):
            with open("/proc/{}/task/{}/children".format(pid, task)) as f:
                found.extend(int(p) for p in f.read().split())
        return sorted(set(found))
    except (OSError, ValueError):
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/{}/stat".format(entry)) as f:
                    # the command may contain spaces and parentheses: ppid follows the last ')'
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return sorted(found)


def process_tree(pid: int) -> List[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children(p))
    return out


def make_images(count: int, seed: int) -> List[Tuple[str, str, bytes]]:
    """(label, content type, bytes): synthetic shape photos of the common camera sizes; JPEG
    mostly, every fourth one PNG."""
    out = []
    for i in range(count):
        w, h = COMMON_SIZES[i % len(COMMON_SIZES)]
        rgb, _ = make_sample(seed + i, w, h)
        data, ctype = encode_mixed(rgb, i)
        out.append(("{}x{}.{}".format(w, h, ctype.split("/")[1]), ctype, data))
    return out


# --------------------------------------------------------------------------- phases

def timed_raw(engine: Engine, ctype: str, body: bytes) -> Tuple[float, str]:
    """One in-process inference: (ms, answer) for decode + detect + render, the worker's work."""
    t0 = time.perf_counter()
    text = engine.infer_text(body, ctype)
    return (time.perf_counter() - t0) * 1000, text


def baseline(engine: Engine, imgs: List[Tuple[str, str, bytes]], rounds: int
             ) -> Tuple[List[str], List[float]]:
    """Expected answers and the median in-process time (ms) per image."""
    expected = [engine.infer_text(body, ctype) for _, ctype, body in imgs]  # also warms up
    times: List[List[float]] = [[] for _ in imgs]
    for _ in range(rounds):
        for i, (_, ctype, body) in enumerate(imgs):
            ms, text = timed_raw(engine, ctype, body)
            times[i].append(ms)
            if text != expected[i]:
                raise SystemExit("the in-process engine is not deterministic on image {}: "
                                 "{!r} then {!r}".format(i, expected[i], text))
    return expected, [float(np.median(t)) for t in times]


class Results:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies_ms: List[float] = []
        self.errors: List[str] = []
        self.wrong: List[str] = []

    def add(self, ms: float, error: Optional[str] = None, wrong: Optional[str] = None) -> None:
        with self.lock:
            if error is not None:
                self.errors.append(error)
            elif wrong is not None:
                self.wrong.append(wrong)
            else:
                self.latencies_ms.append(ms)

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + len(self.errors) + len(self.wrong)


def one_request(client, imgs, expected, i: int, results: Results) -> float:
    label, ctype, body = imgs[i]
    t0 = time.perf_counter()
    try:
        resp = client.invoke_inference_service(AlgoType="object-detection", ServiceName="objectDetection",
                                               ContentType=ctype, Body=body)
        text = resp["Body"].read().decode("utf-8")
    except Exception as e:  # GreengrassInferenceException, GreengrassDependencyException, ...
        ms = (time.perf_counter() - t0) * 1000
        results.add(ms, error="image {} ({}): {}: {}".format(i, label, type(e).__name__, e))
        return ms
    ms = (time.perf_counter() - t0) * 1000
    if text != expected[i]:
        results.add(ms, wrong="image {} ({}): expected {} got {}".format(i, label, expected[i][:120], text[:120]))
    else:
        results.add(ms)
    return ms


def soak(ml, imgs, expected, concurrency: int, duration: float, timeout: float, serve_pid: int,
         sample_every: float) -> Tuple[Results, float, List[Tuple[float, int, Dict[int, Optional[int]]]]]:
    results = Results()
    counter = itertools.count()
    stop = threading.Event()
    samples: List[Tuple[float, int, Dict[int, Optional[int]]]] = []

    def worker() -> None:
        client = ml.client("inference", timeout=timeout)
        while not stop.is_set():
            one_request(client, imgs, expected, next(counter) % len(imgs), results)

    threads = [threading.Thread(target=worker, name="soak-{}".format(n), daemon=True)
               for n in range(concurrency)]
    started = time.monotonic()
    samples.append((0.0, 0, {p: status_kb(p, "VmRSS") for p in process_tree(serve_pid)}))
    for t in threads:
        t.start()
    next_sample = started + sample_every
    while True:
        now = time.monotonic()
        if now >= started + duration:
            break
        stop.wait(max(0.0, min(next_sample, started + duration) - now))
        if time.monotonic() >= next_sample:
            samples.append((time.monotonic() - started, results.requests,
                            {p: status_kb(p, "VmRSS") for p in process_tree(serve_pid)}))
            next_sample += sample_every
    stop.set()
    for t in threads:
        t.join(timeout + 5)
    elapsed = time.monotonic() - started
    samples.append((elapsed, results.requests, {p: status_kb(p, "VmRSS") for p in process_tree(serve_pid)}))
    hung = [t.name for t in threads if t.is_alive()]
    if hung:
        results.errors.append("threads still in a request {} s after the end: {}".format(timeout + 5, hung))
    return results, elapsed, samples


# --------------------------------------------------------------------------- main

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/soak.py",
        description="Soak a real `python -m connector serve` through the ML SDK: throughput, "
                    "latency, RSS growth of the serve and worker processes, and the per-request "
                    "overhead against the same model run in-process. Exit 1 on any failed or wrong "
                    "answer (answers must equal the in-process engine's).")
    p.add_argument("--model-dir", help="model directory (default: the bundled {})".format(DEFAULT_MODEL))
    p.add_argument("--duration", type=float, default=60.0, help="seconds of concurrent load (default 60)")
    p.add_argument("--concurrency", type=int, default=4, help="client threads during the soak (default 4)")
    p.add_argument("--images", type=int, default=16, help="distinct sample images to cycle (default 16)")
    p.add_argument("--rounds", type=int, default=5,
                   help="times each image is run for the raw baseline and the sequential phase (default 5)")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="client socket timeout per request, seconds (default 60)")
    p.add_argument("--service-timeout", type=int, default=30,
                   help="LocalInferenceServiceTimeoutSeconds of the service (default 30)")
    p.add_argument("--memory-limit-kb", type=int, default=1000000,
                   help="LocalInferenceServiceMemoryLimitKB of the service (default 1000000)")
    p.add_argument("--seed", type=int, default=5000, help="seed of the sample images (default 5000)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (config, serve.log)")
    args = p.parse_args(argv)
    for name in ("duration", "concurrency", "images", "rounds", "sample_every", "timeout"):
        if getattr(args, name) <= 0:
            p.error("--{} must be positive".format(name.replace("_", "-")))
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    model_dir = os.path.abspath(args.model_dir or model_path(DEFAULT_MODEL))
    failures: List[str] = []
    print("soak: model {}  images {}  concurrency {}  duration {:.0f} s  cpus {}  python {}".format(
        model_dir, args.images, args.concurrency, args.duration, os.cpu_count(), sys.version.split()[0]))

    imgs = make_images(args.images, args.seed)
    engine = Engine.from_model_dir(model_dir)
    engine_info = {"backend": engine.backend.name, "device": engine.backend.device}
    expected, raw_ms = baseline(engine, imgs, args.rounds)
    print("\n== raw in-process engine ({backend} on {device}; decode + detect + render, median of {r}) =="
          .format(r=args.rounds, **engine_info))
    print("mean {:.1f} ms/image, i.e. {:.1f} images/s on one thread".format(
        np.mean(raw_ms), 1000.0 / np.mean(raw_ms)))

    # The SDK of this process finds the service through its client file only.
    for k in GREENGRASS_VARS:
        os.environ.pop(k, None)
    import greengrass_machine_learning_sdk as ml

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    proc = None
    try:
        t0 = time.monotonic()
        proc, info, env = start_serve(work, Path(model_dir), timeout=args.service_timeout,
                                      memory_limit_kb=args.memory_limit_kb)
        os.environ["GG_ML_IPC_FILE"] = env["GG_ML_IPC_FILE"]
        serve_pid = proc.popen.pid
        health0 = health_counters(healthz(info["port"], info["token"])[1])
        ready_s = time.monotonic() - t0
        tree_ready = {p: status_kb(p, "VmRSS") for p in process_tree(serve_pid)}
        print("\n== service: serve pid {} on port {}, worker pid {}, ready in {:.1f} s ==".format(
            serve_pid, info["port"], health0.get("worker_pid"), ready_s))

        # warm-up and sequential phases: one client, one request at a time
        client = ml.client("inference", timeout=args.timeout)
        warm = Results()
        for i in range(len(imgs)):
            one_request(client, imgs, expected, i, warm)
        # Raw and service alternate, image by image, so that both see the same machine state (on a
        # shared machine the load moves within seconds; phases far apart compare different states).
        seq = Results()
        seq_ms: List[List[float]] = [[] for _ in imgs]
        raw_seq: List[List[float]] = [[] for _ in imgs]
        for _ in range(args.rounds):
            for i, (_, ctype, body) in enumerate(imgs):
                raw_seq[i].append(timed_raw(engine, ctype, body)[0])
                seq_ms[i].append(one_request(client, imgs, expected, i, seq))
        raw_ms = [float(np.median(t)) for t in raw_seq]
        engine.close()
        for phase, res in (("warm-up", warm), ("sequential", seq)):
            for what in ("errors", "wrong"):
                for line in getattr(res, what):
                    failures.append("{} {}: {}".format(phase, what, line))

        print("\n== per image: raw in-process vs service, one request at a time (medians, ms) ==")
        rows = []
        for i, (label, ctype, body) in enumerate(imgs):
            svc = float(np.median(seq_ms[i]))
            rows.append([i, label, len(body), "{:.1f}".format(raw_ms[i]), "{:.1f}".format(svc),
                         "{:+.1f}".format(svc - raw_ms[i]), "{:.2f}x".format(svc / raw_ms[i]),
                         len(json.loads(expected[i])["prediction"])])
        print(table(["#", "image", "bytes", "raw", "service", "overhead", "ratio", "objects"], rows))
        overhead = [float(np.median(seq_ms[i])) - raw_ms[i] for i in range(len(imgs))]
        svc_all = [m for ms in seq_ms for m in ms]
        print("\noverhead per request: median {:+.1f} ms, mean {:+.1f} ms; service/raw: {:.2f}x "
              "(mean service {:.1f} ms vs raw {:.1f} ms)".format(
                  np.median(overhead), np.mean(overhead), np.mean(svc_all) / np.mean(raw_ms),
                  np.mean(svc_all), np.mean(raw_ms)))

        # soak
        tree_start = {p: status_kb(p, "VmRSS") for p in process_tree(serve_pid)}
        res, elapsed, samples = soak(ml, imgs, expected, args.concurrency, args.duration, args.timeout,
                                     serve_pid, args.sample_every)
        health1 = health_counters(healthz(info["port"], info["token"])[1])
        tree_end = {p: status_kb(p, "VmRSS") for p in process_tree(serve_pid)}
        peaks = {p: status_kb(p, "VmHWM") for p in tree_end}
        for what in ("errors", "wrong"):
            for line in getattr(res, what):
                failures.append("soak {}: {}".format(what, line))

        lat = res.latencies_ms
        print("\n== soak: {} threads for {:.1f} s ==".format(args.concurrency, elapsed))
        print(table(["requests", "errors", "wrong", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                    [[res.requests, len(res.errors), len(res.wrong), "{:.1f}".format(res.requests / elapsed),
                      "{:.1f}".format(percentile(lat, 50)), "{:.1f}".format(percentile(lat, 90)),
                      "{:.1f}".format(percentile(lat, 99)), "{:.1f}".format(max(lat) if lat else float("nan"))]]))
        print("throughput vs raw single-thread engine: {:.2f}x ({:.1f} vs {:.1f} images/s)".format(
            (res.requests / elapsed) / (1000.0 / np.mean(raw_ms)), res.requests / elapsed,
            1000.0 / np.mean(raw_ms)))

        def role(pid: int) -> str:
            if pid == serve_pid:
                return "serve"
            if pid == health1.get("worker_pid"):
                return "worker"
            return "child"

        print("\n== RSS (KiB): ready = after start, start = after warm-up/sequential, end = after soak ==")
        rows = []
        for pid in sorted(set(tree_ready) | set(tree_start) | set(tree_end)):
            start, end = tree_start.get(pid), tree_end.get(pid)
            growth = "{:+d}".format(end - start) if start is not None and end is not None else "-"
            pct = "{:+.1f}%".format(100.0 * (end - start) / start) if start and end is not None else "-"
            rows.append([pid, role(pid), tree_ready.get(pid, "-"), start if start is not None else "-",
                         end if end is not None else "gone", growth, pct, peaks.get(pid) or "-"])
        print(table(["pid", "process", "ready", "start", "end", "growth", "growth%", "peak (VmHWM)"], rows))

        print("\n== RSS samples during the soak (KiB) ==")
        pids = sorted({p for _, _, s in samples for p in s})
        print(table(["t s", "requests"] + ["{} {}".format(role(p), p) for p in pids],
                    [["{:.0f}".format(t), n] + [s.get(p, "-") if s.get(p) is not None else "-" for p in pids]
                     for t, n, s in samples]))

        counters = ["restarts", "crashes", "timeouts", "memory_limit_exceeded", "refused"]
        print("\n== /healthz after the soak ==")
        print(table(counters + ["worker", "worker_pid"], [[health1.get(c, "-") for c in counters + ["worker", "worker_pid"]]]))
        for c in ("restarts", "crashes", "timeouts", "memory_limit_exceeded"):
            if health1.get(c):
                failures.append("/healthz reports {} = {}".format(c, health1[c]))
        if health1.get("worker_pid") != health0.get("worker_pid"):
            failures.append("the worker changed: pid {} -> {}".format(health0.get("worker_pid"),
                                                                       health1.get("worker_pid")))
        t1 = time.monotonic()
        code = proc.stop()
        proc = None
        print("\nserve stopped with status {} in {:.1f} s".format(code, time.monotonic() - t1))
        if code != 0:
            failures.append("serve exited with status {}".format(code))
    except AssertionError as e:  # start_serve / Proc.stop report problems this way
        failures.append("service: {}".format(e))
    finally:
        if proc is not None:
            try:
                proc.stop()
            except AssertionError as e:
                failures.append(str(e))
        if args.keep or failures:
            print("work directory (config, serve.log): {}".format(work))
        else:
            shutil.rmtree(work, ignore_errors=True)

    if failures:
        print("\nFAILED: {} problem(s)".format(len(failures)))
        for line in failures[:20]:
            print("  " + line)
        if len(failures) > 20:
            print("  ... and {} more".format(len(failures) - 20))
        return 1
    print("\nOK: every answer equal to the in-process engine's, no errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
