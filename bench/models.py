#!/usr/bin/env python3
"""Time per inference of each kind of model artefact: raw runtime, engine, served request.

    .venv/bin/python bench/models.py [--runs N] [--no-service] [MODEL_DIR ...]

For every model (the bundled ONNX demos, a Neo/DLR graph-runtime directory in NHWC and in NCHW
built from the C fixture, Ultralytics- and torchvision-shaped ONNX graphs from tests/onnx_models.py,
and any MODEL_DIR given, e.g. the real exports and Neo compilations scripts/tools make) on one
640x480 JPEG:

* raw     - backend.run() on a ready tensor: the runtime alone (DLR or ONNX Runtime);
* engine  - Engine.infer(): decode, preprocess (resize or letterbox), run, decode the format,
            NMS where the format needs it, the document;
* service - the same image through `python -m connector serve` and the ML SDK (IPC, worker hop).

Medians of --runs calls after one warm-up; `+ms` is the time over the raw runtime and `x raw` the
ratio to it, both in the same run (for the tiny test graphs the runtime is ~0.01 ms, so their
ratios are large and only `+ms`, the connector's own work per image, means anything). Nothing is asserted: timings depend on the machine and its load (see bench/README.md).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "ml_sdk"))

import numpy as np  # noqa: E402

from bench.soak import table  # noqa: E402
from connector.model import preprocess  # noqa: E402
from connector.model.engine import Engine  # noqa: E402
from connector.errors import ConnectorError  # noqa: E402
from connector.demos import bundled_models  # noqa: E402
from tests import images, onnx_models  # noqa: E402


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def build_models(work: Path) -> List[Tuple[str, str]]:
    models = [(name, path) for name, path in bundled_models().items()]
    try:
        from connector.model.backends import dlr_runtime
        from tests.dlr_fixture.build import build_dlr_model
        if dlr_runtime.find_dlr_package() is not None and shutil.which("gcc"):
            models.append(("neo-fixture-nhwc", build_dlr_model(work / "neo-nhwc")))
            models.append(("neo-fixture-nchw", build_dlr_model(work / "neo-nchw", layout="NCHW")))
    except ImportError:
        pass
    for name, build in (("yolov8-shaped", lambda p: onnx_models.ultralytics_detector(p, "yolov8")),
                        ("yolov5-shaped", lambda p: onnx_models.ultralytics_detector(p, "yolov5")),
                        ("yolo-nms-shaped", lambda p: onnx_models.ultralytics_detector(p, "nms")),
                        ("torchvision-shaped", onnx_models.torchvision_detector)):
        d = work / name
        d.mkdir()
        build(str(d / "model.onnx"))
        models.append((name, str(d)))
    return models


def served_ms(work: Path, model_dir: str, jpeg: bytes, runs: int) -> Optional[float]:
    from tests.service_process import start_serve
    import greengrass_machine_learning_sdk as ml
    tmp = Path(tempfile.mkdtemp(dir=str(work)))
    proc, info, env = start_serve(tmp, Path(model_dir))
    try:
        os.environ["GG_ML_IPC_FILE"] = env["GG_ML_IPC_FILE"]
        client = ml.client("inference")
        return median_ms(lambda: client.invoke_inference_service(
            AlgoType="object-detection", ServiceName="objectDetection", ContentType="image/jpeg",
            Body=jpeg)["Body"].read(), runs)
    finally:
        proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-service", action="store_true", help="skip the served requests")
    parser.add_argument("model_dirs", nargs="*", metavar="MODEL_DIR")
    args = parser.parse_args()
    for var in ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "MY_FUNCTION_ARN", "GG_DAEMON_PORT",
                "GGC_MAX_INTERFACE_VERSION", "GG_ML_INFERENCE_FUNCTION_ARNS"):
        os.environ.pop(var, None)
    work = Path(tempfile.mkdtemp(prefix="bench-models-"))
    try:
        models = build_models(work) + [(os.path.basename(os.path.abspath(d)), os.path.abspath(d))
                                       for d in args.model_dirs]
        rng = np.random.RandomState(3)
        jpeg = images.jpeg(rng.randint(0, 256, (480, 640, 3)).astype(np.uint8))
        rows = []
        for name, path in models:
            try:
                engine = Engine.from_model_dir(path)
            except ConnectorError as e:
                rows.append([name, "error: {}".format(e)[:60]] + [""] * 8)
                continue
            meta = engine.model.metadata
            bgr = np.zeros((480, 640, 3), np.uint8)
            tensor, _ = preprocess.to_tensor(bgr, meta)
            raw = median_ms(lambda: engine.backend.run(tensor), args.runs)
            through = median_ms(lambda: engine.infer(jpeg, "image/jpeg"), args.runs)
            engine.close()
            served = None if args.no_service else served_ms(work, path, jpeg, args.runs)
            rows.append([name, engine.backend.name, engine.format.name, "{:.2f}".format(raw),
                         "{:.2f}".format(through), "+{:.2f}".format(through - raw),
                         "{:.1f}x".format(through / raw)]
                        + (["-"] * 3 if served is None else [
                            "{:.2f}".format(served), "+{:.2f}".format(served - raw),
                            "{:.1f}x".format(served / raw)]))
        print("time per inference, median of {} (ms), one 640x480 JPEG".format(args.runs))
        print(table(["model", "runtime", "format", "raw", "engine", "+ms", "x raw", "service",
                     "+ms", "x raw"], rows))
        return 0
    finally:
        shutil.rmtree(str(work), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
