"""Runtime code must run on the Pythons of Greengrass V1 Lambdas (3.7 and 3.8); vermin checks the
syntax and APIs here, and scripts/test-old-pythons.sh runs the tests under those interpreters."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERMIN = [str(Path(sys.executable).with_name("vermin")), "--no-tips", "--violations", "-t=3.7-",
          "--eval-annotations", "--backport", "dataclasses", "--backport", "typing"]


def vermin(*paths, cwd=ROOT):
    return subprocess.run(VERMIN + list(paths), capture_output=True, text=True, cwd=cwd, timeout=300)


def test_runtime_code_needs_at_most_python_3_7():
    out = vermin("connector", "ml_sdk")
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_check_catches_newer_code(tmp_path):
    (tmp_path / "new.py").write_text("import math\nimport zoneinfo\nprint(math.lcm(2, 3))\n")
    (tmp_path / "walrus.py").write_text("if (n := 1):\n    pass\n")
    (tmp_path / "old_ok.py").write_text("import json\nprint(json.dumps({'a': 1}))\n")
    assert vermin("new.py", cwd=tmp_path).returncode != 0
    assert vermin("walrus.py", cwd=tmp_path).returncode != 0  # 3.8 syntax
    assert vermin("old_ok.py", cwd=tmp_path).returncode == 0
