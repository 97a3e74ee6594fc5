"""Loading and running an ONNX model makes no network attempt (no download, no telemetry).

A child process starts with the guard of tests/model/network_guard.py on the socket entry points,
then loads the bundled ONNX demo in the engine and runs it on an image. The control case connects
under the same guard, so an empty record from the engine case means the guard was watching.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.model.network_guard import GUARD

pytest.importorskip("onnxruntime")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "connector", "demos", "demo-ssd")

CHILD = GUARD + textwrap.dedent("""

    mode, model_dir, report = sys.argv[1:4]
    result = {}
    if mode == "engine":
        import cv2
        import numpy as np
        from connector.model.engine import Engine
        engine = Engine.from_model_dir(model_dir, "cpu")
        ok, png = cv2.imencode(".png", np.full((240, 320, 3), 128, np.uint8))
        for _ in range(2):
            result["prediction"] = engine.infer(png.tobytes(), "image/png")["prediction"]
        result["backend"] = engine.backend.name
    else:  # control: a connection the guard must see
        try:
            socket.create_connection(("127.0.0.1", 9))
        except OSError:
            pass
    result["attempts"] = attempts
    with open(report, "w") as f:
        json.dump(result, f)
""")


def run_child(tmp_path, mode):
    report = str(tmp_path / "{}.json".format(mode))
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, DEMO, report], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    with open(report) as f:
        return json.load(f)


def test_the_onnx_backend_makes_no_network_attempt(tmp_path):
    result = run_child(tmp_path, "engine")
    assert result["backend"] == "onnxruntime"
    assert result["attempts"] == []


def test_control_the_guard_sees_a_connection(tmp_path):
    assert [a["call"] for a in run_child(tmp_path, "control")["attempts"]] == ["socket.create_connection"]
