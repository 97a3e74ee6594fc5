"""scripts/demo_client.py and `infer --draw`: the answer has every detection above the model's own
floor, the drawing keeps those at or above a threshold; both say so, per image, with the numbers."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from connector.demos import bundled_models
from connector.tools.draw import DEFAULT_MIN_SCORE, drawn_summary
from tests.service_process import start_serve

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"^(?P<image>\S+): (?P<rows>\d+) rows? in the answer, (?P<drawn>\d+) at or above the "
                     r"drawing threshold (?P<threshold>[0-9.]+) \(drawn\)$", re.M)


def samples(tmp_path: Path, n: int = 2):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_samples.py"), str(tmp_path / "in"), str(n)],
                         stdout=subprocess.PIPE, universal_newlines=True, check=True, timeout=120)
    return out.stdout.split()


def test_drawn_summary_counts_rows_at_or_above_the_threshold():
    rows = [[0, 0.9, 0, 0, 1, 1], [1, 0.3, 0, 0, 1, 1], [2, 0.29, 0, 0, 1, 1]]
    assert drawn_summary(rows) == "3 rows in the answer, 2 at or above the drawing threshold 0.3 (drawn)"
    assert drawn_summary(rows[:1], 0.95) == "1 row in the answer, 0 at or above the drawing threshold 0.95 (drawn)"
    assert DEFAULT_MIN_SCORE == 0.3


def test_demo_client_reconciles_the_answer_and_the_drawing(tmp_path):
    pytest.importorskip("onnxruntime")
    images = samples(tmp_path)
    proc, _, env = start_serve(tmp_path, Path(bundled_models()["demo-ssd"]))
    env = dict(env, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "ml_sdk")]))

    def demo(*args):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_client.py"), *args], env=env,
                              cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=120)
    try:
        default = demo(str(tmp_path / "out"), *images)
        everything = demo("--min-score", "0", str(tmp_path / "out0"), *images)
        bad = demo("--min-score", "1.5", str(tmp_path / "out1"), *images)
    finally:
        proc.stop()
    assert default.returncode == 0, default.stderr
    found = list(SUMMARY.finditer(default.stdout))
    assert [m["image"] for m in found] == images and all(m["threshold"] == "0.3" for m in found)
    for m, block in zip(found, default.stdout.split("annotated copy:")):
        listed = re.findall(r"^  \S+\s+(\d\.\d\d)  box", block, re.M)
        assert len(listed) == int(m["drawn"]) and all(float(s) >= 0.3 for s in listed), block
    # The demo model answers with many low-scoring rows: the summary is what reconciles them.
    assert any(int(m["rows"]) > int(m["drawn"]) for m in found), default.stdout
    assert everything.returncode == 0, everything.stderr
    zero = list(SUMMARY.finditer(everything.stdout))
    assert [(m["rows"], m["drawn"], m["threshold"]) for m in zero] == [(m["rows"], m["rows"], "0") for m in found]
    assert bad.returncode == 2 and "--min-score: must be a number from 0 to 1, got '1.5'" in bad.stderr


def test_infer_draw_prints_the_threshold_it_draws_with(tmp_path):
    pytest.importorskip("onnxruntime")
    images = samples(tmp_path, 1)
    out = subprocess.run([sys.executable, "-m", "connector", "infer", "--draw", str(tmp_path / "drawn"), *images],
                         cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["prediction"]  # stdout: still one JSON document per image
    m = SUMMARY.search(out.stderr)
    assert m and m["image"] == images[0], out.stderr
    assert (int(m["rows"]), int(m["drawn"]), m["threshold"]) == \
        (len(rows), sum(1 for r in rows if r[1] >= 0.3), "0.3")
    plain = subprocess.run([sys.executable, "-m", "connector", "infer", *images], cwd=str(ROOT),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert plain.returncode == 0 and plain.stderr == "" and json.loads(plain.stdout)["prediction"] == rows
