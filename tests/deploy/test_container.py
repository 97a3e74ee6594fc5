"""The container image (scripts/container/build.sh) built and run for real with podman.

The image is built from Debian's packages and PyPI wheels (no registry pull), started with host
networking as docs/container.md says, and called from this host through the bundled SDK (client
file on a mounted directory), through the seed's example Lambda with the Greengrass V1 Lambda
environment (the path AWS's SDK takes inside a core: token and port from the environment, no
client file), and through SPEC section 4's exchange spoken by hand. SIGTERM must drain and exit 0.

Needs root, podman, runc and debootstrap (.ci/run installs them). Where they are missing the
tests skip, saying so; under CI (CI=true) they fail instead, so a CI run never passes without them.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest

from connector.ipc import clientfile
from tests.service_process import ROOT, scaled

sys.path.insert(0, str(ROOT / "ml_sdk"))
sys.path.insert(0, str(ROOT / "scripts"))
import greengrass_machine_learning_sdk as ml  # noqa: E402
import shapes_dataset as sd  # noqa: E402

IMAGE = "localhost/ml-object-detection-connector:test"
UID = 10001  # the image's user (scripts/container/Containerfile)
# crun refuses hosts with hybrid cgroups; the limits keep podman within this sandbox's.
PODMAN = ["podman", "--runtime", "runc"] if shutil.which("runc") else ["podman"]
RUN_OPTS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
ARN = "arn:aws:lambda:us-east-1:aws:function:GG-ML-INF-object-detection-objectDetection"


def _why_not() -> Optional[str]:
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing:
        return "needs {} (apt-get install podman runc debootstrap; .ci/run does)".format(
            ", ".join(missing))
    if os.geteuid() != 0:
        return "needs root (debootstrap and podman import)"
    return None


REASON = _why_not()
if REASON and os.environ.get("CI") == "true":
    raise RuntimeError("CI must run the container tests: " + REASON)
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""),
              pytest.mark.timeout(900)]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(PODMAN + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=scaled(timeout))
    if check and out.returncode != 0:
        raise AssertionError("podman {} failed ({}):\n{}{}".format(
            " ".join(args), out.returncode, out.stdout, out.stderr))
    return out


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    work = tmp_path_factory.mktemp("container-build")
    started = time.monotonic()
    out = subprocess.run(["bash", str(ROOT / "scripts/container/build.sh"), "--tag", IMAGE,
                          "--work", str(work / "w")], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True, timeout=scaled(900))
    assert out.returncode == 0, out.stdout
    print("\nbuilt in {:.0f} s:\n{}".format(time.monotonic() - started, out.stdout))
    yield IMAGE
    podman("rmi", "--force", IMAGE, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RUN_DIRS: List[Path] = []


@pytest.fixture(scope="module", autouse=True)
def _remove_run_dirs():
    yield
    for d in _RUN_DIRS:
        shutil.rmtree(str(d), ignore_errors=True)


def client_dir(tmp_path: Path) -> Path:
    """A directory for the client file as docs/container.md says: the image's user owns it, 0700,
    under directories only root can write (/run: under /tmp a file of another user is refused)."""
    base = tmp_path
    if os.access("/run", os.W_OK):
        base = Path(tempfile.mkdtemp(dir="/run", prefix="ggml-test-"))
        base.chmod(0o755)
        _RUN_DIRS.append(base)
    d = base / "gg-ml"
    d.mkdir(mode=0o700)
    os.chown(str(d), UID, UID)
    return d


class Container:
    def __init__(self, image: str, tmp_path: Path, args: List[str] = (), env: Dict[str, str] = None,
                 volumes: List[str] = ()) -> None:
        self.name = "ggml-test-{}-{}".format(os.getpid(), tmp_path.name)
        self.port = free_port()
        self.dir = client_dir(tmp_path)
        # --pid host: the client file names the service's pid, which host callers check (in a
        # PID namespace of its own it would be pid 1, and the entry would look stale to them).
        cmd = ["run", "-d", "--name", self.name, "--network", "host", "--pid", "host", *RUN_OPTS,
               "-e", "GG_DAEMON_PORT={}".format(self.port), "-v", "{}:/run/gg-ml".format(self.dir)]
        for key, value in (env or {}).items():
            cmd += ["-e", "{}={}".format(key, value)]
        for volume in volumes:
            cmd += ["-v", volume]
        self.started = time.monotonic()
        podman(*cmd, image, *args)

    def logs(self) -> str:
        out = podman("logs", self.name, check=False)
        return out.stdout + out.stderr

    def running(self) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"

    def wait_ready(self, timeout: float = 60) -> float:
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            assert self.running(), "the container exited:\n" + self.logs()
            try:
                if get(self.port, "/readyz")[0] == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("not ready after {} s:\n{}".format(timeout, self.logs()))

    def entry(self) -> dict:
        return clientfile.read(str(self.dir / "ipc.json"), "objectDetection")

    def stop(self) -> int:
        """SIGTERM (what podman stop, Kubernetes and systemd send), then the exit status."""
        podman("kill", "--signal", "TERM", self.name)
        return int(podman("wait", self.name, timeout=60).stdout.strip())

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


def get(port: int, path: str, token: Optional[str] = None) -> "tuple[int, bytes]":
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": token} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def one_object_sample():
    """A synthetic photo with exactly one shape, as JPEG bytes, and its [class, x0, y0, x1, y1]
    as fractions of the image (the demo detectors were trained on this generator)."""
    for seed in range(100):
        rgb, boxes = sd.make_sample(np.random.default_rng([99001, seed]), 512, 512, max_objects=1)
        if len(boxes) == 1:
            data, _ = sd.encode_mixed(rgb, 0)
            cls, x0, y0, x1, y1 = (float(v) for v in boxes[0])
            return data, [cls, x0 / 512, y0 / 512, x1 / 512, y1 / 512]
    raise AssertionError("no one-object sample in 100 seeds")


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def assert_detects(document: str, truth) -> None:
    top = json.loads(document)["prediction"][0]
    assert top[0] == truth[0] and top[1] > 0.5, (document, truth)
    assert iou(top[2:], truth[1:]) > 0.7, (document, truth)


def test_image_is_lean_non_root_with_health_check(image):
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    config = info["Config"]
    assert config["User"] == "{0}:{0}".format(UID)
    assert config["Entrypoint"][:4] == ["/opt/gg-ml/bin/python", "-m", "connector", "serve"]
    healthcheck = info.get("Healthcheck") or config.get("Healthcheck")
    assert "/readyz" in " ".join(healthcheck["Test"])
    assert "GG_ML_IPC_FILE=/run/gg-ml/ipc.json" in config["Env"]
    # No compiler, no package installer: what runs is all that is there.
    out = podman("run", "--rm", "--network", "none", *RUN_OPTS, "--entrypoint", "/bin/sh", image, "-c",
                 "command -v gcc cc pip pip3 apt-get dpkg-deb; ls /opt/gg-ml/bin; "
                 "ls /usr/share/man /var/lib/apt/lists | wc -l", check=False)
    assert "gcc" not in out.stdout and "pip" not in out.stdout, out.stdout
    print("\nimage size: {:.0f} MB".format(info["Size"] / 1e6))


def test_serves_the_bundled_model_to_sdk_seed_lambda_and_raw_protocol(image, tmp_path, sdk_env):
    jpeg, truth = one_object_sample()
    c = Container(image, tmp_path)
    try:
        print("\nready {:.2f} s after podman run".format(c.wait_ready()))
        assert get(c.port, "/livez")[0] == 200
        entry = c.entry()
        # Bound to loopback (host networking: the tokens plus loopback are the trust model), by
        # the image's non-root user (the client file is its own).
        assert entry["host"] == "127.0.0.1" and entry["port"] == c.port
        assert os.stat(str(c.dir / "ipc.json")).st_uid == UID
        assert os.stat(str(c.dir / "ipc.json")).st_mode & 0o077 == 0
        assert podman("healthcheck", "run", c.name, check=False).returncode == 0, c.logs()

        # 1. The SDK, finding the service through the client file on the mounted directory.
        sdk_env.setenv("GG_ML_IPC_FILE", str(c.dir / "ipc.json"))
        resp = ml.client("inference").invoke_inference_service(
            AlgoType="object-detection", ServiceName="objectDetection", ContentType="image/jpeg",
            Body=jpeg)
        assert_detects(resp["Body"].read().decode("utf-8"), truth)
        with pytest.raises(ml.GreengrassInferenceException, match="truncated"):
            ml.client("inference").invoke_inference_service(
                AlgoType="object-detection", ServiceName="objectDetection",
                ContentType="image/jpeg", Body=jpeg[:300])

        # 2. The seed's example Lambda, unchanged, with the environment a V1 core gives a Lambda:
        #    the token and port come from there and no client file is read.
        image_file = tmp_path / "test.jpg"
        image_file.write_bytes(jpeg)
        lambda_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GG_"))}
        lambda_env.update(AWS_CONTAINER_AUTHORIZATION_TOKEN=entry["token"],
                          GG_DAEMON_PORT=str(c.port), AWS_REGION=entry["region"],
                          GGC_MAX_INTERFACE_VERSION="1.5", MY_FUNCTION_ARN="arn:aws:lambda:{}:"
                          "123456789012:function:client:1".format(entry["region"]),
                          GG_ML_IPC_FILE=str(tmp_path / "no-such-client-file.json"),
                          PYTHONPATH="{}:{}".format(ROOT / "ml_sdk", ROOT))
        out = subprocess.run([sys.executable, str(ROOT / "tests/seed/run_example.py"), str(image_file)],
                             env=lambda_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True, timeout=scaled(60))
        assert out.returncode == 0 and "EXAMPLE_DONE" in out.stdout, out.stdout
        assert "exception" not in out.stdout, out.stdout
        assert_detects(out.stdout.split("predictions: ", 1)[1].splitlines()[0], truth)

        # 3. SPEC section 4 by hand: post_work, then get_work_result, raw token, no SDK at all.
        conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=30)
        path = "/2016-11-01/functions/" + ARN
        context = base64.b64encode(json.dumps({"custom": {"Content-Type": "image/jpeg"}}).encode())
        conn.request("POST", path, body=jpeg, headers={
            "Authorization": entry["token"], "X-Amz-Client-Context": context.decode(),
            "X-Amz-Invocation-Type": "RequestResponse"})
        posted = conn.getresponse()
        posted.read()
        assert posted.status in (200, 202), posted.status
        conn.request("GET", path, headers={"Authorization": entry["token"],
                                           "X-Amz-InvocationId": posted.getheader("X-Amz-InvocationId")})
        answer = conn.getresponse()
        payload = json.loads(answer.read())
        conn.close()
        assert answer.status == 200 and answer.getheader("X-Amz-Function-Error") is None
        assert_detects(payload["Body"], truth)
        # Without the token: refused, and /metrics is no exception.
        assert get(c.port, "/metrics")[0] == 401
        assert get(c.port, "/metrics", "Bearer " + entry["token"])[0] == 200

        assert c.stop() == 0, c.logs()
        assert "finishing in-flight requests" in c.logs()
        # The stopped service took its entry out of the client file (the last one: the file).
        ipc = c.dir / "ipc.json"
        assert not ipc.exists() or "objectDetection" not in clientfile.entries(str(ipc))
    finally:
        c.remove()


def test_mounted_model_and_parameters_from_environment_and_file(image, tmp_path, sdk_env):
    """A model directory mounted read-only, a mounted parameter file, environment variables over
    it: what docs/container.md tells a user to do with their own model."""
    model = tmp_path / "model"
    shutil.copytree(str(ROOT / "connector/demos/demo-yolov3"), str(model))
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "examples/params.yaml").read_text().replace(
        "MLModelResourceId: demo-ssd", "MLModelResourceId: from-the-file"))
    os.chmod(str(params), 0o644)
    c = Container(image, tmp_path, env={"MLModelDestinationPath": "/models/mine",
                                        "LocalInferenceServiceName": "yoloDetect"},
                  volumes=["{}:/models/mine:ro".format(model), "{}:/etc/gg-ml/params.yaml:ro".format(params)])
    try:
        c.wait_ready()
        entry = clientfile.read(str(c.dir / "ipc.json"), "yoloDetect")
        status, body = get(c.port, "/healthz", entry["token"])
        health = json.loads(body)
        assert status == 200 and health["service"] == "yoloDetect" and health["model"] == "from-the-file"
        jpeg, truth = one_object_sample()
        sdk_env.setenv("GG_ML_IPC_FILE", str(c.dir / "ipc.json"))
        resp = ml.client("inference").invoke_inference_service(
            AlgoType="object-detection", ServiceName="yoloDetect", ContentType="image/jpeg", Body=jpeg)
        assert_detects(resp["Body"].read().decode("utf-8"), truth)
        assert c.stop() == 0, c.logs()
        assert "loaded onnx model /models/mine" in c.logs()
    finally:
        c.remove()


def test_bad_parameter_is_one_line_and_exit_2(image, tmp_path):
    out = podman("run", "--rm", "--network", "none", *RUN_OPTS, "-e", "LocalInferenceServiceTimeoutSeconds=ten",
                 "-v", "{}:/run/gg-ml".format(client_dir(tmp_path)), image, check=False, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "LocalInferenceServiceTimeoutSeconds='ten'" in errors[0], out.stderr
