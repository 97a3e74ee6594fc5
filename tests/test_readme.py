"""The README as a user meets it: its first lines, its length, its links, and its examples run
exactly as written.

The end-to-end test runs the README's "Collecting samples" block with bash (its `export` lines and
its `python -m connector serve --config examples/params.yaml --feedback-config examples/feedback.yaml`
line, with `python` the interpreter running these tests), calls the service with the README's SDK
snippet, reads /metrics with the README's token lines, and finds the sample and its JSON sidecar
saved. examples/feedback.yaml names a fixed local directory (/tmp/gg-ml-samples, for a user trying
it out); the test points it into its tmp directory the way a user can override any parameter: the
environment variable FeedbackConfigurationMap (JSON) wins over the file. It is the example's map
with only local-directory changed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional

import pytest

from connector.feedback import config as feedback_config
from connector.ipc import clientfile
from connector.params import load_parameters
from tests.service_process import healthz, scaled

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 300
SERVE_LINE = ("python -m connector serve --config examples/params.yaml "
              "--feedback-config examples/feedback.yaml")

FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


# -- reading markdown ----------------------------------------------------------------------------

def code_blocks(text: str, language: Optional[str] = None) -> List[str]:
    return [m.group(2) for m in FENCE.finditer(text) if language is None or m.group(1) == language]


def block_with(text: str, needle: str, language: Optional[str] = None) -> str:
    found = [b for b in code_blocks(text, language) if needle in b]
    assert len(found) == 1, "README: {} code block(s) hold {!r}".format(len(found), needle)
    return found[0]


def prose(text: str) -> str:
    """The text outside fenced code and inline code: where links are."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def links(text: str) -> List[str]:
    return LINK.findall(prose(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> List[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return [slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.MULTILINE)]


def link_problem(source: Path, target: str) -> Optional[str]:
    """Why `target`, a link in `source`, is not a good one; None when it is."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
        return None if re.match(r"^https?://", target) else "{}: not a web link".format(target)
    path_part, _, fragment = target.partition("#")
    resolved = (source.parent / path_part).resolve() if path_part else source
    if ROOT not in resolved.parents and resolved != ROOT:
        return "{}: outside the repository".format(target)
    if not resolved.exists():
        return "{}: no such file".format(target)
    if fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
        return "{}: {} has no heading #{}".format(target, resolved.relative_to(ROOT), fragment)
    return None


# -- the document --------------------------------------------------------------------------------

def test_the_first_lines_are_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# ") and lines[1] == "" and lines[2] == "```sh", lines[:3]
    assert lines[3].startswith("./scripts/demo.sh ") and lines[4].startswith("./scripts/test.sh "), lines[3:5]
    assert lines[5] == "```"
    # CI runs the second one.
    assert "./scripts/test.sh" in (ROOT / ".ci" / "run").read_text().splitlines()[-1]


def test_the_readme_is_short():
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= MAX_README_LINES, "README.md has {} lines; at most {}".format(count, MAX_README_LINES)


@pytest.mark.parametrize("path", [README] + DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_stays_in_the_repository_or_is_a_web_page(path):
    found = links(path.read_text(encoding="utf-8"))
    problems = [p for p in (link_problem(path, target) for target in found) if p]
    assert not problems, "{}:\n{}".format(path.relative_to(ROOT), "\n".join(problems))


def test_the_readme_speaks_to_a_user_not_to_the_project():
    text = README.read_text(encoding="utf-8")
    for needle in ("SPEC", "../shared", "issue ", "the seed"):
        assert needle not in text, "README.md mentions {!r}".format(needle)


def test_the_link_checker_catches_what_it_should(tmp_path):
    doc = ROOT / "docs" / "limits.md"
    assert link_problem(doc, "security.md") is None
    assert link_problem(doc, "security.md#what-is-not-guaranteed") is None
    assert link_problem(doc, "https://example.org/x") is None
    assert "no such file" in link_problem(doc, "nothing-here.md")
    assert "outside the repository" in link_problem(doc, "../../shared/SPEC.md")
    assert "no heading" in link_problem(doc, "security.md#no-such-section")
    assert "not a web link" in link_problem(doc, "file:///etc/passwd")
    assert links("[a](x.md) `[b](y.md)`\n```\n[c](z.md)\n```\n") == ["x.md"]
    assert slug("The decoder's pixel limit") == "the-decoders-pixel-limit"
    assert slug("MQTT publishing (GGRouter)") == "mqtt-publishing-ggrouter"


# -- the examples ---------------------------------------------------------------------------------

def venv_path() -> str:
    """PATH with this interpreter's directory first: `python` in a README line is the one running
    these tests (the user's activated .venv)."""
    bin_dir = os.path.dirname(sys.executable)
    if not os.path.exists(os.path.join(bin_dir, "python")):
        pytest.skip("no `python` beside {}".format(sys.executable))
    return bin_dir + os.pathsep + os.environ.get("PATH", "")


def readme_model_path() -> str:
    """MLModelDestinationPath as the README's export line sets it."""
    text = README.read_text(encoding="utf-8")
    line = next(l for l in block_with(text, SERVE_LINE, "sh").splitlines()
                if l.startswith("export MLModelDestinationPath="))
    out = subprocess.run(["bash", "-c", line + '\nprintf %s "$MLModelDestinationPath"'], cwd=str(ROOT),
                         env=dict(os.environ, PATH=venv_path()), stdout=subprocess.PIPE, check=True,
                         timeout=scaled(60), universal_newlines=True).stdout
    return out


def test_the_readme_points_params_yaml_at_the_bundled_model():
    path = readme_model_path()
    from connector.demos import model_path
    assert path == model_path("demo-ssd")
    params = load_parameters(str(ROOT / "examples" / "params.yaml"), {"MLModelDestinationPath": path})
    assert params.model_path == path and params.service_name == "objectDetection"
    assert params.feedback_config_id == ""
    # Without the environment, the path the container image keeps its demo at.
    assert load_parameters(str(ROOT / "examples" / "params.yaml"), {}).model_path == "/models/demo-ssd"


def test_the_feedback_example_keeps_every_sample_in_a_local_directory():
    loaded = feedback_config.load_parameters(str(ROOT / "examples" / "feedback.yaml"), {"HOME": "/home/u"})
    config = loaded.configs["demo-samples"]
    assert config.strategy is None and not config.conditions.filters and config.bucket is None
    assert config.local_directory == "/tmp/gg-ml-samples" and config.prefix == "demo-ssd"
    assert config.content_type == "image/jpeg" and config.file_ext == "jpg"
    text = README.read_text(encoding="utf-8")
    assert "export MLFeedbackConnectorConfigId=demo-samples" in block_with(text, SERVE_LINE, "sh")
    assert "/tmp/gg-ml-samples/demo-ssd/<uuid4>.jpg" in text


# -- end to end, as the README says ---------------------------------------------------------------

def sample_photo(directory: Path) -> Path:
    """out/demo/input/sample-0-640x480.jpg as ./scripts/demo.sh makes it."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_samples.py"), str(directory), "1"],
                   check=True, stdout=subprocess.DEVNULL, timeout=scaled(60))
    photo = directory / "sample-0-640x480.jpg"
    assert photo.is_file()
    return photo


def feedback_map_in(samples: Path) -> str:
    """The example's FeedbackConfigurationMap with local-directory moved, as JSON (what a user puts
    in the environment to override the file)."""
    data = feedback_config.read_file(str(ROOT / "examples" / "feedback.yaml"))
    mapping = data["FeedbackConfigurationMap"]
    mapping["demo-samples"]["local-directory"] = str(samples)
    return json.dumps(mapping)


class Served(NamedTuple):
    env: Dict[str, str]
    ipc: Path        # the client file
    samples: Path    # where the example's config puts the samples (moved into tmp)
    proc: "subprocess.Popen[bytes]"
    log: Path


def wait_for(what: str, check, proc: "subprocess.Popen[bytes]", log: Path, timeout: float = 60.0):
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("serve exited with {} before {}:\n{}".format(
                proc.returncode, what, log.read_text(errors="replace")))
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("no {} after {} s:\n{}".format(what, timeout, log.read_text(errors="replace")))


def entry_of(ipc: Path) -> Optional[Dict]:
    try:
        return clientfile.read(str(ipc), "objectDetection")
    except (OSError, ValueError):
        return None


def ready(port: int) -> bool:
    try:
        return healthz(port, path="/readyz")[0] == 200
    except OSError:
        return False


def saved_samples(directory: Path) -> List[Path]:
    return sorted(p for p in directory.glob("*.jpg") if (p.parent / (p.name + ".json")).is_file())


@pytest.fixture()
def served_as_the_readme_says(tmp_path) -> Iterator[Served]:
    """The README's block, run by bash in the repository, until SIGTERM (exit status 0)."""
    text = README.read_text(encoding="utf-8")
    block = block_with(text, SERVE_LINE, "sh")
    assert SERVE_LINE in block.splitlines()
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    samples = tmp_path / "samples"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "GG_", "MY_FUNCTION", "MLModel", "LocalInference", "Feedback"))}
    env.update(PATH=venv_path(), PYTHONPATH=str(ROOT), GG_ML_IPC_FILE=str(run / "ipc.json"),
               GG_DAEMON_PORT="0", XDG_STATE_HOME=str(tmp_path / "state"),
               FeedbackConfigurationMap=feedback_map_in(samples))
    log = tmp_path / "serve.log"
    with open(str(log), "wb") as out:
        proc = subprocess.Popen(["bash", "-c", block], cwd=str(ROOT), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        entry = wait_for("client-file entry", lambda: entry_of(run / "ipc.json"), proc, log)
        wait_for("/readyz 200", lambda: ready(entry["port"]), proc, log)
        yield Served(env, run / "ipc.json", samples / "demo-ssd", proc, log)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(scaled(30)) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(scaled(10))


def test_the_readme_example_saves_a_sample_and_its_sidecar(served_as_the_readme_says, tmp_path):
    served = served_as_the_readme_says
    env = served.env
    text = README.read_text(encoding="utf-8")
    # The SDK snippet, verbatim, from a directory holding the demo's first photo.
    caller = tmp_path / "caller"
    photo = sample_photo(caller / "out" / "demo" / "input")
    snippet = block_with(text, "invoke_inference_service", "python")
    answer = subprocess.run([sys.executable, "-c", snippet], cwd=str(caller), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=scaled(60),
                            universal_newlines=True)
    assert answer.returncode == 0, answer.stderr
    prediction = json.loads(answer.stdout)["prediction"]
    assert prediction and all(len(row) == 6 and 0 <= row[1] <= 1 for row in prediction)
    assert any(row[1] >= 0.3 for row in prediction)

    found = wait_for("saved sample", lambda: saved_samples(served.samples), served.proc, served.log,
                     timeout=30)
    assert len(found) == 1
    image = found[0]
    assert image.read_bytes() == photo.read_bytes()
    sidecar = json.loads((image.parent / (image.name + ".json")).read_text())
    assert sidecar["config-id"] == "demo-samples" and sidecar["content-type"] == "image/jpeg"
    assert sidecar["model-prediction"] == {"prediction": prediction}
    assert sidecar["metadata"]["model-resource-id"] == "demo-ssd"
    assert os.stat(str(image)).st_mode & 0o777 == 0o600
    assert not Path("/tmp/gg-ml-samples/demo-ssd", image.name).exists()  # the override held

    # /metrics with the token lines of the README (curl where it is installed).
    metrics = block_with(text, "/metrics", "bash")
    token_lines = "\n".join(l for l in metrics.splitlines() if not l.startswith("curl "))
    port_token = subprocess.run(["bash", "-c", token_lines + '\nprintf "%s %s" "$PORT" "$TOKEN"'],
                                env=env, stdout=subprocess.PIPE, check=True, timeout=scaled(30),
                                universal_newlines=True).stdout.split()
    entry = entry_of(served.ipc)
    assert port_token == [str(entry["port"]), entry["token"]]
    request = urllib.request.Request("http://127.0.0.1:{}/metrics".format(entry["port"]),
                                     headers={"Authorization": "Bearer " + entry["token"]})
    with urllib.request.urlopen(request, timeout=scaled(10)) as response:
        body = response.read().decode("utf-8")
    assert 'ggml_requests_total{service="objectDetection",outcome="ok"} 1' in body
    if shutil.which("curl"):
        out = subprocess.run(["bash", "-c", metrics], env=env, stdout=subprocess.PIPE, check=True,
                             timeout=scaled(30), universal_newlines=True).stdout
        assert "ggml_requests_total" in out
