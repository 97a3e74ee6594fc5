"""`python -m connector check-model DIR`: what the connector makes of a model directory.

Prints what was recognised (runtime, output format), the input contract and where it comes from,
the outputs, the labels, then runs the model on a blank image and times it (through the engine,
image bytes to document, and the raw runtime call alone). A bad directory is one error line and
a non-zero exit status, so it can gate a deployment script.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Callable, List, TextIO

import cv2
import numpy as np

from ..model import contract, preprocess
from ..model.engine import Engine
from ..errors import ConnectorError


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    times: List[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def blank_png(height: int, width: int) -> bytes:
    ok, png = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))
    if not ok:
        raise RuntimeError("OpenCV could not encode a blank image")
    return png.tobytes()


def check_model(path: str, device: str = "cpu", runs: int = 10, out: TextIO = sys.stdout) -> None:
    """Load, describe, run and time the model in `path`; ConnectorError when it is not usable."""
    started = time.perf_counter()
    engine = Engine.from_model_dir(path, device=device)
    load_s = time.perf_counter() - started
    try:
        model, meta, io = engine.model, engine.model.metadata, engine.backend.io
        files = ", ".join(sorted(os.path.basename(name) for name in model.files.values()))
        say = lambda *a: print(*a, file=out)  # noqa: E731
        say("model directory: {} ({} model: {})".format(model.path, model.kind, files))
        say("runtime:         {} on {} (loaded in {:.2f} s)".format(
            engine.backend.name, engine.backend.device, load_s))
        say("output format:   {} ({})".format(engine.format.name, "declared in model.yaml"
                                              if "format" in meta.declared else "recognised from the outputs"))
        say("input:           {}".format(contract.describe_input(meta)))
        say("outputs:         {}".format(", ".join(
            "{} {}".format(o.name, contract.fmt_shape(o.shape)) for o in io.outputs)))
        labels = model.labels
        say("labels:          {}".format("{} ({}{})".format(
            len(labels), ", ".join(labels[:5]), ", ..." if len(labels) > 5 else "")
            if labels else "none (class ids only)"))
        png = blank_png(meta.height, meta.width)
        rows = engine.infer(png, "image/png")["prediction"]
        say("blank image:     {} detection(s)".format(len(rows)))
        tensor, _ = preprocess.to_tensor(np.zeros((meta.height, meta.width, 3), np.uint8), meta)
        through = _median_ms(lambda: engine.infer(png, "image/png"), runs)
        raw = _median_ms(lambda: engine.backend.run(tensor), runs)
        say("time/inference:  {:.1f} ms image to answer, {:.1f} ms in the runtime (median of {})"
            .format(through, raw, runs))
    finally:
        engine.close()


def main(path: str, device: str, runs: int) -> int:
    try:
        check_model(path, device, runs)
    except ConnectorError as e:
        print("error: {}".format(e), file=sys.stderr)
        return 1
    print("OK: the connector can serve this model")
    return 0
