"""`attach`, `feedback` and IPCClient read the client file as the SDK does, before any token leaves
the process; `--function-token-file` is read as a secret; `--client-file-group` works from a fresh
start. Attacked as a local user who can write one directory the operator chose badly: a fake host
listens where the planted file points, and must never see a byte."""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from connector.ipc import IPCClient, IPCHost, clientfile, protocol
from tests.service_process import ROOT, clean_env, params_file

ARN = protocol.inference_function_arn("us-east-1", "object-detection", "objectDetection")
FEEDBACK_ARN = protocol.feedback_function_arn("us-east-1")
FUNCTION_TOKEN = "the-real-function-token"
NOBODY = 65534


class FakeHost(threading.Thread):
    """Listens on loopback and records every connection made to it (it answers nothing)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received = []
        self.start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(1.0)
            try:
                self.received.append(conn.recv(65536))
            except OSError:
                self.received.append(b"")
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake():
    host = FakeHost()
    yield host
    host.close()


def plant(directory: Path, fake: FakeHost) -> Path:
    """A client file naming the fake host, with function tokens beside it, as a live host writes
    them (this process's pid), in `directory` (made safe for the write; the test unsafes it)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ipc = directory / "ipc.json"
    clientfile.publish(str(ipc), "objectDetection", "127.0.0.1", fake.port, "caller-token", "us-east-1")
    clientfile.publish_function_tokens(str(ipc), "objectDetection",
                                       {ARN: FUNCTION_TOKEN, FEEDBACK_ARN: FUNCTION_TOKEN})
    return ipc


def run_command(args, ipc: Path, tmp_path: Path, fake: FakeHost) -> "tuple[int, str]":
    """`python -m connector ARGS` until it exits (or 60 s, or it reaches the fake host)."""
    log = tmp_path / "command.log"
    with open(str(log), "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "connector"] + args, env=clean_env(ipc),
                                cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while proc.poll() is None and not fake.received and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    return proc.returncode, log.read_text()


def config_for(command: str, tmp_path: Path, model_dir: Path) -> Path:
    """A valid --config for `command`: connector parameters, or a feedback service's (a local
    directory as its destination, so it starts with no AWS)."""
    if command == "attach":
        return params_file(tmp_path / "params.json", model_dir)
    cfg = tmp_path / "feedback.json"
    cfg.write_text(json.dumps({
        "FeedbackConfigurationMap": {"cam": {"local-directory": str(tmp_path / "samples"),
                                             "content-type": "image/jpeg"}},
        "FeedbackSpoolDirectory": str(tmp_path / "spool")}))
    return cfg


def refused_in_one_line(code: int, text: str, *words: str) -> None:
    lines = text.strip().splitlines()
    assert code == 2, text
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("command", ["attach", "feedback"])
def test_attaching_refuses_a_client_file_others_could_have_replaced(command, tmp_path, model_dir, fake):
    cfg = config_for(command, tmp_path, model_dir)
    token_file = tmp_path / "token"
    token_file.write_text(FUNCTION_TOKEN + "\n")
    token_file.chmod(0o600)
    shared = tmp_path / "shared"
    ipc = plant(shared, fake)
    shared.chmod(0o777)  # the operator's bad choice: anybody may replace the file now
    try:
        for extra in ([], ["--function-token-file", str(token_file)]):
            code, text = run_command([command, "--config", str(cfg)] + extra, ipc, tmp_path, fake)
            refused_in_one_line(code, text, "refusing the client file", "writable by others")
    finally:
        shared.chmod(0o700)
    # a symbolic link in place of the file, in a safe directory
    link = tmp_path / "link.json"
    link.symlink_to(ipc)
    code, text = run_command([command, "--config", str(cfg)], link, tmp_path, fake)
    refused_in_one_line(code, text, "symbolic link")
    # another user's directory above the file
    attic = tmp_path / "attic"
    planted = plant(attic / "in", fake)
    os.chown(str(attic), NOBODY, NOBODY)
    code, text = run_command([command, "--config", str(cfg)], planted, tmp_path, fake)
    refused_in_one_line(code, text, "belongs to uid {}".format(NOBODY))
    assert fake.received == []  # not one byte, least of all the function's token


def test_ipc_client_from_client_file_applies_the_same_rule(tmp_path, fake):
    shared = tmp_path / "shared"
    ipc = plant(shared, fake)
    assert IPCClient.from_client_file(str(ipc)).port == fake.port  # safe: used
    shared.chmod(0o770)
    try:
        with pytest.raises(ValueError, match="writable by its group"):
            IPCClient.from_client_file(str(ipc), token=FUNCTION_TOKEN)
        with pytest.raises(ValueError, match="refusing the function-token file"):
            clientfile.function_token(str(ipc), ARN)
    finally:
        shared.chmod(0o700)
    os.chmod(str(ipc), 0o622)
    with pytest.raises(ValueError, match="writable by"):
        IPCClient.from_client_file(str(ipc))
    assert fake.received == []


def test_the_function_token_file_is_read_as_a_secret(tmp_path, model_dir, fake):
    """A symbolic link (it could point at any file the user can read, sent as the token), a
    file others can write, a huge or a binary file: one line each, and nothing is sent."""
    cfg = params_file(tmp_path / "params.json", model_dir)
    ipc = plant(tmp_path / "safe", fake)
    secret = tmp_path / "secret"
    secret.write_text("not a token for anybody\n")
    cases = {"link": "symbolic link", "writable": "writable by others", "huge": "larger than 4096",
             "binary": "does not hold a token", "fifo": "not a regular file"}
    for name, says in cases.items():
        path = tmp_path / name
        if name == "link":
            path.symlink_to(secret)
        elif name == "fifo":
            os.mkfifo(str(path), 0o600)
        else:
            path.write_bytes({"writable": b"tok\n", "huge": b"t" * 5000,
                              "binary": b"tok\x00en\n"}[name])
            path.chmod(0o666 if name == "writable" else 0o600)
        code, text = run_command(["attach", "--config", str(cfg), "--function-token-file", str(path)],
                                 ipc, tmp_path, fake)
        refused_in_one_line(code, text, "cannot use the function token file", says)
    assert fake.received == []
    good = tmp_path / "good"
    good.write_text(FUNCTION_TOKEN + "\n")
    good.chmod(0o600)
    from connector.standalone.attach import _read_token_file
    assert _read_token_file(str(good)) == FUNCTION_TOKEN


# -- --client-file-group from a fresh start ---------------------------------------------------------

def _groups() -> "list[int]":
    groups = [os.getgid()]
    if os.geteuid() == 0:
        groups.append(NOBODY)  # root may give any group; the test below then reads as nobody
    else:
        groups += [g for g in os.getgroups() if g != os.getgid()][:1]
    return groups


@pytest.mark.parametrize("gid", _groups())
def test_a_client_file_group_reaches_the_file_from_a_fresh_directory(gid, tmp_path):
    directory = tmp_path / "fresh" / "greengrass-ml"
    ipc = directory / "ipc.json"
    with IPCHost(client_file=str(ipc), client_file_group=str(gid)) as host:
        host.register_function(ARN, served=False)
        st = directory.stat()
        assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_gid == gid, (oct(st.st_mode), st.st_gid)
        st = ipc.stat()
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == gid
        functions = Path(str(ipc) + clientfile.FUNCTIONS_SUFFIX).stat()
        assert stat.S_IMODE(functions.st_mode) == 0o600  # function tokens: the owner only
        # the SDK's safety rule accepts a group-readable directory, and so do the attaching readers
        from greengrass_machine_learning_sdk import _endpoint
        assert _endpoint.unsafe_reason(str(ipc)) is None
        assert clientfile.read(str(ipc))["token"] == host.token


def test_one_service_stopping_or_starting_without_a_group_keeps_anothers_group(tmp_path):
    """Services sharing a client file: the group one of them lets in stays while it runs, whoever
    else starts or stops; the file is private again once no service in it names a group."""
    gid = _groups()[-1]
    ipc = tmp_path / "run" / "ipc.json"

    def looks():
        st = ipc.stat()
        return oct(stat.S_IMODE(st.st_mode)), st.st_gid

    grouped = IPCHost(client_file=str(ipc), client_file_group=str(gid), name="a").start()
    try:
        with IPCHost(client_file=str(ipc), client_file_group=str(gid), name="b"):
            assert looks() == (oct(0o640), gid)
        assert looks() == (oct(0o640), gid)  # b stopped: a's group stays
        with IPCHost(client_file=str(ipc), name="c"):
            assert looks() == (oct(0o640), gid)  # c names no group: a's group stays
    finally:
        grouped.shutdown(0)
    with IPCHost(client_file=str(ipc), name="d"):
        assert looks()[0] == oct(0o600)  # nobody names a group any more


def test_an_existing_group_readable_directory_is_accepted_as_it_is(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir(mode=0o750)
    directory.chmod(0o750)
    ipc = directory / "ipc.json"
    with IPCHost(client_file=str(ipc), client_file_group=str(os.getgid())):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o750
        assert stat.S_IMODE(ipc.stat().st_mode) == 0o640
    directory.chmod(0o770)  # group-writable: the group could replace the file
    with pytest.raises(clientfile.ClientFileError, match="writable by its group"):
        IPCHost(client_file=str(ipc), client_file_group=str(os.getgid())).start()


SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


@pytest.mark.skipif(os.geteuid() != 0 or not SYSTEM_PYTHON, reason="needs root and a system python3")
def test_a_member_of_the_group_can_use_the_host_the_way_the_sdk_finds_it():
    """The group's member (uid nobody, gid nobody) finds the host through the file, as the SDK
    does; before, the fresh directory was 0700 and the 0640 file out of the group's reach."""
    base = Path(tempfile.mkdtemp(prefix="ggml-group-", dir="/tmp"))
    try:
        base.chmod(0o711)  # others may pass through, not list or write
        ipc = base / "greengrass-ml" / "ipc.json"
        with IPCHost(client_file=str(ipc), client_file_group=str(NOBODY)) as host:
            host.set_ready()
            script = ("import sys; sys.path.insert(0, {!r})\n"
                      "from greengrass_machine_learning_sdk import _endpoint\n"
                      "print(_endpoint.resolve({{'GG_ML_IPC_FILE': {!r}, 'HOME': '/'}}).port)\n"
                      ).format(str(ROOT / "ml_sdk"), str(ipc))

            def as_nobody() -> None:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            result = subprocess.run([SYSTEM_PYTHON, "-c", script], preexec_fn=as_nobody,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
                                    env={"PATH": "/usr/bin:/bin"}, cwd="/")
            assert result.returncode == 0, result.stdout.decode()
            assert result.stdout.decode().strip() == str(host.port)
    finally:
        shutil.rmtree(str(base))
