"""Start `python -m connector serve|host|attach` as real processes for the service tests."""
from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from connector.ipc import clientfile

ROOT = Path(__file__).resolve().parents[1]
# Waits for start-up and shutdown are multiplied by this (e.g. 20 under qemu emulation, where
# loading the runtime takes minutes): a slow machine fails no test for being slow.
WAIT_FACTOR = float(os.environ.get("GG_ML_TEST_WAIT_FACTOR", "1") or "1")


def scaled(seconds: float) -> float:
    return seconds * max(WAIT_FACTOR, 1.0)


def params_file(path: Path, model_dir: Path, name: str = "objectDetection", timeout: int = 10,
                memory_limit_kb: int = 500000) -> Path:
    path.write_text(json.dumps({
        "MLModelDestinationPath": str(model_dir), "MLModelResourceId": "fixture-model",
        "LocalInferenceServiceName": name, "LocalInferenceServiceTimeoutSeconds": str(timeout),
        "LocalInferenceServiceMemoryLimitKB": str(memory_limit_kb)}))
    return path


def clean_env(ipc_file: Path, **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "GG_", "MY_FUNCTION", "MLModel", "LocalInference"))}
    env.update(GG_ML_IPC_FILE=str(ipc_file), PYTHONPATH=str(ROOT), **extra)
    return env


class Proc:
    def __init__(self, args, env: Dict[str, str], log: Path, nofile: Optional[int] = None,
                 own_group: bool = False) -> None:
        """:param nofile: the process's open-files limit (RLIMIT_NOFILE), as a small device has.
        :param own_group: start it in a process group of its own (os.killpg reaches it and its
            workers, as systemd's stop or a terminal's Ctrl-C do, and not this test run)."""
        self.log_path = log
        self._log = open(log, "wb")

        def limits() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            if own_group:
                os.setpgid(0, 0)

        self.popen = subprocess.Popen([sys.executable, "-m", "connector", *args], env=env, cwd=ROOT,
                                      stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=limits)

    def kill(self) -> None:
        """SIGKILL the process and reap it (its worker sees its pipe close and exits too)."""
        if self.popen.poll() is None:
            self.popen.kill()
        try:
            self.popen.wait(scaled(10))
        finally:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise AssertionError("process did not stop after SIGTERM:\n" + self.log())
        finally:
            self._log.close()


def wait_for_client_file(path: Path, proc: Proc, timeout: float = 30.0,
                         name: Optional[str] = None) -> dict:
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError("process exited with {}:\n{}".format(proc.popen.returncode, proc.log()))
        if path.exists():
            try:
                if name is None or name in clientfile.entries(str(path)):
                    return clientfile.read(str(path), name)  # the service's entry, flat
            except ValueError:
                pass
        time.sleep(0.05)
    raise AssertionError("no client file after {} s:\n{}".format(timeout, proc.log()))


def healthz(port: int, token: Optional[str] = None, path: str = "/healthz") -> "tuple[int, dict]":
    """The probe's answer; with a token the whole document (errors included), else the status only."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": token} if token else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def counters(document: dict) -> dict:
    """Every number of a detailed /healthz document's sections by its own name (for benches that
    print them side by side); a section's ``state`` as ``worker`` for the worker's."""
    flat = {}
    for section in ("requests", "worker", "board", "connections"):
        values = document.get(section) or {}
        flat.update((k, v) for k, v in values.items() if k != "state")
    flat["worker"] = (document.get("worker") or {}).get("state")
    return flat


def wait_ready(port: int, proc: Proc, timeout: float = 30.0) -> dict:
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError("process exited with {}:\n{}".format(proc.popen.returncode, proc.log()))
        try:
            status, body = healthz(port)
            if status == 200:
                return body
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("not ready after {} s:\n{}".format(timeout, proc.log()))


def start_serve(tmp: Path, model_dir: Path, env_extra: Optional[Dict[str, str]] = None,
                timeout: int = 10, memory_limit_kb: int = 500000,
                extra_args: Sequence[str] = (), nofile: Optional[int] = None,
                own_group: bool = False) -> "tuple[Proc, dict, Dict[str, str]]":
    ipc = tmp / "ipc.json"
    env = clean_env(ipc, **(env_extra or {}))
    cfg = params_file(tmp / "params.json", model_dir, timeout=timeout, memory_limit_kb=memory_limit_kb)
    proc = Proc(["serve", "--config", str(cfg), "--port", "0", *extra_args], env, tmp / "serve.log",
                nofile=nofile, own_group=own_group)
    try:
        info = wait_for_client_file(ipc, proc)
        wait_ready(info["port"], proc)
    except BaseException:
        # A service that never became ready must not outlive the test (orphans pile up on slow
        # machines and hold ports, memory and CPU for the tests after it).
        proc.kill()
        raise
    return proc, info, env
