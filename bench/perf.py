#!/usr/bin/env python3
"""Where the service stands against its floor and a peer, in one run (see bench/README.md).

For each model, on 640x480 and 1920x1080 JPEGs, interleaved request by request:

* ``raw``     - the runtime alone (``backend.run``) on a ready tensor: the floor (a session of its
  own, so that the engine's weights are not run twice a round);
* ``engine``  - ``Engine.infer_text`` in this process: decode, preprocess, run, postprocess, render;
* ``worker``  - the same through one supervised worker process (``WorkerSupervisor.infer``) called from
  this process: the worker hop without HTTP, to split the service's overhead;
* ``svc wN``  - a real ``python -m connector serve`` with N inference workers, through the
  bundled ML SDK, which takes the host's fast path (one setting per ``--workers`` value);
* ``svc wN v1`` - the same service through the same SDK held to the V1 exchange
  (``GG_ML_IPC_FAST=0``: POST the work, GET the result);
* ``aws wN``  - the same service through a client written as the unmodified AWS SDK's IPC client
  is (``greengrass_ipc_python_sdk``: urllib, a new connection for each of the two requests);
* ``peer``    - bench/peer_fastapi.py: FastAPI + uvicorn around the same Engine (thread spinning
  off, as ours), when fastapi and uvicorn are installed;
* ``protocol`` / ``protocol v1`` - bench/protocol_floor.py through the same SDK, on the fast path
  and held to the V1 exchange: the IPC host of ``serve`` with a handler that returns the
  service's answer at once, so no model and no worker. What each exchange costs by itself; they
  have no pair with ``engine``.

Printed: per image size the median and p90 of each, the paired median difference and ratio to
``engine`` (pairs are the same image in the same round); the decode and inference times of
``engine`` and of ``worker`` as each times them, paired (does the model run slower in a worker?);
throughput with 1, 2, 4, 8 clients for
``--duration`` seconds each against ``engine`` called in a loop by one thread; cold start to the
first answer; resident memory of every process before and after; the load average. Every answer
of the service and the peer must equal the engine's byte for byte (exit status 1 otherwise).
Nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import http.client
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "ml_sdk", ROOT / "scripts", ROOT / "bench"):
    sys.path.insert(0, str(extra))

import numpy as np  # noqa: E402

from connector.model import imaging, preprocess  # noqa: E402
from connector.model.engine import Engine  # noqa: E402
from connector.demos import model_path  # noqa: E402
from connector.supervision.supervisor import WorkerSupervisor  # noqa: E402
from shapes_dataset import encode_mixed, make_sample  # noqa: E402
from soak import percentile, process_tree, status_kb, table  # noqa: E402
from tests.service_process import start_serve  # noqa: E402

SIZES = ((640, 480), (1920, 1080))
REALISTIC = ROOT / "bench" / "realistic"  # bench/make_realistic_models.py writes here
Call = Callable[[str, bytes], str]


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f} on {} cores".format(*os.getloadavg(), os.cpu_count())


def jpegs(per_size: int) -> List[Tuple[str, bytes]]:
    out = []
    for w, h in SIZES:
        for i in range(per_size):
            rgb, _ = make_sample(np.random.default_rng([77, w, i]), w, h)
            out.append(("{}x{}".format(w, h), encode_mixed(rgb, 0)[0]))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pids: List[int]) -> str:
    return " + ".join("{:.0f}".format((status_kb(p, "VmRSS") or 0) / 1024) for p in pids) + " MB"


# --------------------------------------------------------------------------- the callers

def sdk_call(ctype: str, body: bytes, local=threading.local()) -> str:
    import greengrass_machine_learning_sdk as ml
    if not hasattr(local, "client"):
        local.client = ml.client("inference")
    response = local.client.invoke_inference_service(
        AlgoType="object-detection", ServiceName="objectDetection", ContentType=ctype, Body=body)
    return response["Body"].read().decode("utf-8")


def sdk_caller(ipc_file: str, fast: bool) -> Call:
    """The SDK on the service of `ipc_file`, on its fast path or held to the V1 exchange."""
    def call(ctype: str, body: bytes) -> str:
        os.environ["GG_ML_IPC_FILE"] = ipc_file  # the SDK keeps one endpoint per client file
        os.environ["GG_ML_IPC_FAST"] = "1" if fast else "0"
        return sdk_call(ctype, body)
    return call


def aws_caller(ipc_file: str) -> Call:
    """The service called as the unmodified AWS SDK calls it: greengrass_ipc_python_sdk's
    IPCClient (urllib, no keep-alive) posts the work and GETs the result; the ML SDK then reads
    the JSON answer's Body."""
    import base64
    import json
    import urllib.request
    from connector.ipc import clientfile, protocol
    entry = clientfile.read(ipc_file, "objectDetection")
    url = "http://{}:{}{}".format(entry["host"], entry["port"], protocol.function_path(
        protocol.inference_function_arn(entry["region"], "object-detection", "objectDetection")))

    def call(ctype: str, body: bytes) -> str:
        context = base64.b64encode(json.dumps({"custom": {"Content-Type": ctype}}).encode()).decode()
        post = urllib.request.Request(url, data=body, method="POST", headers={
            "Authorization": entry["token"], "X-Amz-Client-Context": context,
            "X-Amz-Invocation-Type": "RequestResponse"})
        with urllib.request.urlopen(post, timeout=120) as response:
            invocation_id = response.getheader("X-Amz-InvocationId")
        get = urllib.request.Request(url, method="GET", headers={
            "Authorization": entry["token"], "X-Amz-InvocationId": invocation_id})
        with urllib.request.urlopen(get, timeout=120) as response:
            if response.getheader("X-Amz-Function-Error"):
                raise RuntimeError("function error: " + response.read().decode()[:200])
            return json.loads(response.read().decode("utf-8"))["Body"]
    return call


class Peer:
    """bench/peer_fastapi.py in its own process; None from start() when FastAPI is missing."""

    def __init__(self, model_dir: str, device: str) -> None:
        self.port = free_port()
        started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "peer_fastapi.py"), model_dir,
                                      str(self.port), "--device", device],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.local = threading.local()
        self.cold_s = None
        while self.proc.poll() is None and time.perf_counter() - started < 300:
            try:
                self.call("image/jpeg", jpegs(1)[0][1])
                self.cold_s = time.perf_counter() - started
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the peer did not start: " + self.proc.stderr.read().decode()[-2000:])

    def call(self, ctype: str, body: bytes) -> str:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request("POST", "/infer", body=body, headers={"Content-Type": ctype})
            response = conn.getresponse()
            text = response.read().decode("utf-8")
        except (OSError, http.client.HTTPException):
            self.local.conn = None
            conn.close()
            raise
        if response.status != 200:
            raise RuntimeError("peer answered {}: {}".format(response.status, text[:200]))
        return text

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class ProtocolFloor:
    """bench/protocol_floor.py in its own process, reached through the SDK like the service."""

    def __init__(self, work: Path, answer: str) -> None:
        work.mkdir(mode=0o700, parents=True)
        (work / "answer.json").write_text(answer, encoding="utf-8")
        self.ipc = str(work / "ipc.json")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "protocol_floor.py"), self.ipc,
                                      "objectDetection", str(work / "answer.json")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("bench/protocol_floor.py did not start")

    def caller(self, fast: bool) -> Call:
        """None from each call: it answers every image with the first one's text, so nothing to
        compare."""
        call = sdk_caller(self.ipc, fast)
        return lambda ctype, body: (call(ctype, body), None)[1]

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def has_peer() -> bool:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
        return True
    except ImportError:
        return False


# --------------------------------------------------------------------------- measuring

def latency(methods: Dict[str, Call], images: List[Tuple[str, bytes]], reference: Dict[bytes, str],
            rounds: int, problems: List[str], phases: Optional[Phases] = None
            ) -> Dict[Tuple[str, str], List[float]]:
    """{(method, size): [ms per round and image]}, the methods in a new random order every request.
    With `phases`, the decode and inference times that methods left in ``phases.last`` are
    collected per (method, size) too.

    Random, not rotating: in a rotation each method keeps its predecessor, and "engine" after
    "raw" finds the same weights in the CPU caches, while every other method follows another
    process that has just evicted them (1-3 ms on the demo models on a 2-core VM)."""
    names = list(methods)
    order = random.Random(7)
    times: Dict[Tuple[str, str], List[float]] = {}
    for r in range(rounds):
        for size, body in images:
            order.shuffle(names)
            for name in names:
                t0 = time.perf_counter()
                text = methods[name]("image/jpeg", body)
                times.setdefault((name, size), []).append((time.perf_counter() - t0) * 1000)
                if phases is not None and name in phases.last:
                    phases.seen.setdefault((name, size), []).append(phases.last.pop(name))
                if text is not None and text != reference[body]:
                    problems.append("{} answered {} differently from the engine".format(name, size))
    return times


class Phases:
    """Decode and inference seconds of the engine in this process and of the same work in the
    worker process, request by request: whether the model itself runs slower in the worker."""

    def __init__(self) -> None:
        self.last: Dict[str, Dict[str, float]] = {}
        self.seen: Dict[Tuple[str, str], List[Dict[str, float]]] = {}

    def rows(self, size: str) -> List[List[str]]:
        engine, worker = self.seen.get(("engine", size), []), self.seen.get(("worker", size), [])
        rows = []
        for phase in ("decode", "inference"):
            mine = [p[phase] * 1000 for p in engine]
            theirs = [p[phase] * 1000 for p in worker]
            if mine and theirs:
                diffs = [b - a for a, b in zip(mine, theirs)]
                rows.append([size, phase, "{:.2f}".format(np.median(mine)), "{:.2f}".format(np.median(theirs)),
                             "{:+.2f}".format(np.median(diffs))])
        return rows


def throughput(call: Call, images: List[Tuple[str, bytes]], clients: int, seconds: float
               ) -> Tuple[float, List[float], int]:
    """(requests a second, latencies in ms, errors) with `clients` threads calling back to back."""
    stop_at = time.perf_counter() + seconds
    lat: List[float] = []
    errors = [0]
    lock = threading.Lock()

    def run(offset: int) -> None:
        n = offset
        while time.perf_counter() < stop_at:
            body = images[n % len(images)][1]
            n += 1
            t0 = time.perf_counter()
            try:
                call("image/jpeg", body)
            except Exception:  # noqa: BLE001 - counted and reported
                with lock:
                    errors[0] += 1
                continue
            with lock:
                lat.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lat) / (time.perf_counter() - started), lat, errors[0]


def bench_model(model_dir: str, args: argparse.Namespace, work: Path, problems: List[str]) -> None:
    name = os.path.basename(model_dir.rstrip("/"))
    print("\n## {} ({})\n{}".format(name, model_dir, load()))
    images = jpegs(args.images)
    t0 = time.perf_counter()
    engine = Engine.from_model_dir(model_dir, args.device)
    engine.warm_up()
    engine_cold = time.perf_counter() - t0
    meta = engine.model.metadata
    tensors = {body: preprocess.to_tensor(imaging.decode_bgr(body, reduction=lambda w, h: preprocess.reduction(w, h, meta)), meta)[0]
               for _, body in images}
    reference = {body: engine.infer_text(body, "image/jpeg") for _, body in images}
    # The floor gets a session of its own: sharing the engine's would run the engine's weights
    # twice a round, keeping them in the CPU caches for it and for no other method.
    floor_engine = Engine.from_model_dir(model_dir, args.device)
    floor_engine.warm_up()
    methods: Dict[str, Call] = {
        "raw": lambda ctype, body: (floor_engine.backend.run(tensors[body]), None)[1],
    }
    phases = Phases()

    def in_process(ctype: str, body: bytes) -> str:
        text = engine.infer_text(body, ctype)
        phases.last["engine"] = dict(engine.last_timings)
        return text

    def one_worker(ctype: str, body: bytes) -> str:
        answer = pool.infer(body, ctype)
        text = answer.text
        phases.last["worker"] = answer.timings
        return text

    methods["engine"] = in_process
    pool = WorkerSupervisor(model_dir, args.device, timeout_s=60.0, service_name="perf")
    methods["worker"] = one_worker
    services, cold = [], {"engine (in-process load)": engine_cold}
    env_extra = {"GPUAcceleration": "GPU"} if args.device == "gpu" else {}
    try:
        for workers in args.workers:
            tmp = work / "{}-w{}".format(name, workers)
            tmp.mkdir(parents=True)
            t0 = time.perf_counter()
            proc, info, env = start_serve(tmp, Path(model_dir), timeout=60, memory_limit_kb=args.memory_limit_kb,
                                          env_extra=dict(env_extra, CONNECTOR_INFERENCE_WORKERS=str(workers)))
            services.append(proc)
            label = "svc w{}".format(workers)
            methods[label] = sdk_caller(env["GG_ML_IPC_FILE"], fast=True)
            methods[label]("image/jpeg", images[0][1])
            cold[label] = time.perf_counter() - t0
            methods[label + " v1"] = sdk_caller(env["GG_ML_IPC_FILE"], fast=False)
            methods["aws w{}".format(workers)] = aws_caller(env["GG_ML_IPC_FILE"])
        floor = ProtocolFloor(work / "{}-protocol".format(name), reference[images[0][1]])
        methods["protocol"] = floor.caller(fast=True)
        methods["protocol v1"] = floor.caller(fast=False)
        peer = Peer(model_dir, args.device) if args.peer else None
        if peer is not None:
            methods["peer"] = peer.call
            cold["peer"] = peer.cold_s
        procs = [("svc w{}".format(w), p.popen.pid) for w, p in zip(args.workers, services)]
        if peer is not None:
            procs.append(("peer", peer.proc.pid))
        before = {label: rss_mb(process_tree(pid)) for label, pid in procs}

        # Warm-up, then interleaved latency.
        latency(methods, images, reference, 1, problems)
        times = latency(methods, images, reference, args.rounds, problems, phases)
        rows = []
        for size in sorted({s for s, _ in images}, key=lambda s: int(s.split("x")[0])):
            base = times[("engine", size)]
            for m in methods:
                t = times[(m, size)]
                diffs = [a - b for a, b in zip(t, base)]
                ratios = [a / b for a, b in zip(t, base)]
                paired = not m.startswith("protocol")  # no model: its time is the overhead itself
                rows.append([size, m, "{:.2f}".format(np.median(t)), "{:.2f}".format(percentile(t, 90)),
                             "{:+.2f}".format(np.median(diffs)) if paired else "-",
                             "{:.2f}x".format(np.median(ratios)) if paired else "-"])
        print("\nlatency, one request at a time ({} rounds x {} images, paired with engine):".format(
            args.rounds, len(images)))
        print(table(["image", "method", "p50 ms", "p90 ms", "vs engine ms", "x engine"], rows))
        print("\nthe model's own work, in this process and in the worker (paired, ms):")
        print(table(["image", "phase", "engine p50", "worker p50", "worker - engine"],
                    [row for size in sorted({s for s, _ in images}, key=lambda s: int(s.split("x")[0]))
                     for row in phases.rows(size)]))

        # Throughput: the engine in a loop (one thread) is the baseline.
        rows = []
        loop_rate, loop_lat, _ = throughput(methods["engine"], images, 1, args.duration)
        rows.append(["engine loop", 1, "{:.1f}".format(loop_rate), "1.00x",
                     "{:.1f}".format(np.median(loop_lat)), "{:.1f}".format(percentile(loop_lat, 90)), 0])
        for clients in args.clients:
            for m in methods:
                if m in ("raw", "engine", "worker") or m.startswith("protocol"):
                    continue
                rate, lat, errors = throughput(methods[m], images, clients, args.duration)
                if errors:
                    problems.append("{} failed {} requests with {} clients".format(m, errors, clients))
                rows.append([m, clients, "{:.1f}".format(rate), "{:.2f}x".format(rate / loop_rate),
                             "{:.1f}".format(percentile(lat, 50)), "{:.1f}".format(percentile(lat, 90)), errors])
        print("\nthroughput, {:.0f} s per point ({}):".format(args.duration, load()))
        print(table(["method", "clients", "req/s", "x engine loop", "p50 ms", "p90 ms", "errors"], rows))
        print("\ncold start to the first answer: " + ", ".join(
            "{} {:.2f} s".format(k, v) for k, v in cold.items() if v is not None))
        print("resident memory (each process of the tree: serve, then its workers):")
        print(table(["process", "before", "after"],
                    [[label, before[label], rss_mb(process_tree(pid))] for label, pid in procs]))
    finally:
        for proc in services:
            if proc.stop() != 0:
                problems.append("a serve process did not stop with status 0")
        if "peer" in methods:
            peer.stop()
        if "protocol" in methods:
            floor.stop()
        os.environ.pop("GG_ML_IPC_FAST", None)
        pool.close()
        engine.close()
        floor_engine.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="model directories (default: the two bundled "
                        "demos, plus bench/realistic/* when bench/make_realistic_models.py made them)")
    parser.add_argument("--rounds", type=int, default=15, help="latency rounds (default 15)")
    parser.add_argument("--images", type=int, default=2, help="images per size (default 2)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per throughput point")
    parser.add_argument("--clients", default="1,2,4,8", help="client counts (default 1,2,4,8)")
    parser.add_argument("--workers", default="1,2", help="the service's worker counts to compare "
                        "(numbers, or auto: what the service chooses by default)")
    parser.add_argument("--memory-limit-kb", type=int, default=2_000_000)
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"),
                        help="gpu: GPUAcceleration=GPU for the service, the CUDA provider in-process")
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="skip the FastAPI peer")
    parser.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    try:
        args.clients = [int(c) for c in args.clients.split(",")]
        args.workers = [w if w == "auto" else int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error("--clients and --workers take comma-separated numbers (--workers also auto)")
    if args.peer and not has_peer():
        print("(no fastapi/uvicorn here: the peer is skipped; pip install fastapi uvicorn)")
        args.peer = False
    models = [os.path.abspath(m) for m in args.models] or [model_path("demo-ssd"), model_path("demo-yolov3")] + sorted(
        str(p) for p in REALISTIC.glob("*") if p.is_dir())
    import tempfile
    problems: List[str] = []
    print("# bench/perf.py on {} ({})".format(os.uname().nodename, load()))
    with tempfile.TemporaryDirectory(prefix="perf-", dir=args.work) as work:
        for model in models:
            bench_model(model, args, Path(work), problems)
    print("\n" + load())
    for p in sorted(set(problems)):
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
