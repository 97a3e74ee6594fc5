"""The host as a trust boundary (issue 9, points 1, 2, 6 and 8), attacked as a local program would.

Everything here runs the real thing: `python -m connector serve|host|attach` processes and IPC
hosts on loopback, the SDK in subprocesses. The attacker holds what any local program can get: the
callers' token from the client file, write access where the file system lets it write.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from connector.ipc import IPCClient, IPCError, clientfile, protocol
from connector.ipc.clientfile import ClientFileError
from connector.ipc.host import IPCHost
from tests.dlr_fixture.build import RED, blank_image, draw_box
from tests import images
from tests.service_process import (ROOT, Proc, clean_env, healthz, params_file, start_serve,
                                   wait_for_client_file, wait_ready)

NOBODY = 65534
ARN = protocol.inference_function_arn("us-east-1", "object-detection", "objectDetection")


def red_png() -> bytes:
    return images.png(draw_box(blank_image(), RED, 64, 128, 256, 384))


def sdk_call(ipc_file: str, service: str = "objectDetection", extra_env=None) -> "tuple[int, str]":
    """One SDK call in a fresh process (its own environment): (exit status, output)."""
    script = ("import sys; sys.path.insert(0, {sdk!r})\n"
              "import greengrass_machine_learning_sdk as ml\n"
              "body = open({png!r}, 'rb').read()\n"
              "try:\n"
              "    r = ml.client('inference').invoke_inference_service(AlgoType='object-detection',"
              " ServiceName={service!r}, ContentType='image/png', Body=body)\n"
              "    print('OK', r['Body'].read().decode())\n"
              "except Exception as e:\n"
              "    print('ERR', type(e).__name__, e); sys.exit(3)\n")
    png = Path(ipc_file).parent / "call.png"
    png.write_bytes(red_png())
    env = clean_env(Path(ipc_file), **(extra_env or {}))
    result = subprocess.run([sys.executable, "-c", script.format(
        sdk=str(ROOT / "ml_sdk"), png=str(png), service=service)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    return result.returncode, result.stdout.decode()


def raw(port: int, method: str, path: str, token: str, body: bytes = b"", headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        all_headers = {"Authorization": token, "Content-Length": str(len(body))}
        all_headers.update(headers or {})
        connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# -- point 1: per-function credentials ---------------------------------------------------------

def test_a_caller_token_can_neither_take_answer_nor_switch_off_the_service(tmp_path, model_dir):
    proc, info, env = start_serve(tmp_path, model_dir)
    try:
        port, caller = info["port"], info["token"]
        arn = protocol.inference_function_arn(info["region"], "object-detection", "objectDetection")
        client = IPCClient("127.0.0.1", port, caller, timeout=10)
        context = protocol.encode_client_context({"Content-Type": "image/png"})
        victim = client.post_work(arn, red_png(), context)  # a real invocation, ours to attack
        work, answer = protocol.function_path(arn, "work"), protocol.function_path(arn, "initialized")
        # take work (another caller's image), forge a result or an error, switch the service off
        for method, path, body, headers in (
                ("GET", work, b"", {}),
                ("POST", work, b'{"Body": "forged"}', {protocol.HEADER_INVOCATION_ID: victim}),
                ("POST", work, b'{"errorMessage": "forged"}', {protocol.HEADER_INVOCATION_ID: victim,
                                                               protocol.HEADER_FUNCTION_ERROR: "Handled"}),
                ("PUT", answer, b'{"Success": false, "Response": "off"}', {})):
            status, text = raw(port, method, path, caller, body, headers)
            assert status == 403, (method, path, status, text)
            assert b"own token" in text
        # the victim's call is answered by the service, not by the attacker
        out = client.get_work_result(arn, victim)
        assert out.func_err is None and "prediction" in json.loads(out.payload)["Body"]
        # the service is still on, and says so
        assert sdk_call(env["GG_ML_IPC_FILE"])[0] == 0
        assert healthz(port, path="/readyz")[0] == 200
    finally:
        assert proc.stop() == 0, proc.log()


def test_one_caller_cannot_fetch_another_callers_result(tmp_path):
    """Two principals: the callers' token and a function calling as a caller with its own."""
    with IPCHost(write_client_file=False, result_timeout_s=5) as host:
        served, other = ARN, ARN + "-other"
        worker = host.client(timeout=5, function_arn=served)
        other_token = host.register_function(other, served=False)
        as_other = IPCClient("127.0.0.1", host.port, other_token, timeout=5)
        caller = host.client(timeout=5)
        mine = as_other.post_work(served, b"other's image")
        work = worker.get_work(served)
        assert work.payload == b"other's image"
        worker.post_work_result(served, work.invocation_id, b"other's answer")
        with pytest.raises(IPCError) as e:  # the callers' token, the right id: not yours
            caller.get_work_result(served, mine)
        assert e.value.status == 404
        assert as_other.get_work_result(served, mine).payload == b"other's answer"
        # a function token cannot take another function's work either
        with pytest.raises(IPCError) as e:
            as_other.get_work(served)
        assert e.value.status == 403


def test_function_tokens_are_distinct_and_registering_rejects_the_callers_token():
    with IPCHost(write_client_file=False) as host:
        a, b = host.register_function(ARN), host.register_function(ARN + "-b")
        assert len({a, b, host.token}) == 3
        with pytest.raises(ValueError):
            host.register_function(ARN + "-c", token=host.token)


def test_attach_finds_its_token_in_the_function_token_file_or_says_how(tmp_path, model_dir):
    ipc = tmp_path / "ipc.json"
    arn = protocol.inference_function_arn("us-east-1", "object-detection", "objectDetection")
    cfg = params_file(tmp_path / "params.json", model_dir)
    # without a host that gave the function a token: one line, exit 2
    host = Proc(["host", "--port", "0"], clean_env(ipc), tmp_path / "host0.log")
    try:
        wait_for_client_file(ipc, host)
        lonely = subprocess.run([sys.executable, "-m", "connector", "attach", "--config", str(cfg)],
                                env=clean_env(ipc), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=60)
        assert lonely.returncode == 2, lonely.stderr
        lines = lonely.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "host --function" in lines[0], lines
    finally:
        assert host.stop() == 0, host.log()
    host = Proc(["host", "--port", "0", "--function", arn], clean_env(ipc), tmp_path / "host.log")
    worker = None
    try:
        info = wait_for_client_file(ipc, host)
        worker = Proc(["attach", "--config", str(cfg)], clean_env(ipc), tmp_path / "worker.log")
        deadline = time.monotonic() + 60
        while True:
            code, out = sdk_call(str(ipc))
            if code == 0:
                break
            assert time.monotonic() < deadline and worker.popen.poll() is None, out + worker.log()
            time.sleep(0.3)
        assert json.loads(out.split(" ", 1)[1])["prediction"][0][0] == 0
        assert stat.S_IMODE(os.stat(str(ipc) + ".functions").st_mode) == 0o600
        assert clientfile.function_token(str(ipc), arn) != info["token"]
    finally:
        if worker:
            assert worker.stop() == 0, worker.log()
        assert host.stop() == 0, host.log()
    assert not os.path.exists(str(ipc) + ".functions")  # the host withdrew its tokens


# -- point 2: a client file nobody else can swap --------------------------------------------------

def test_host_refuses_a_directory_others_can_write_with_one_line_that_says_how(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ClientFileError) as e:
        IPCHost(client_file=str(shared / "ipc.json")).start()
    assert "writable by others" in str(e.value) and "chmod go-w" in str(e.value)
    assert not (shared / "ipc.json").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o755)
    os.chown(str(foreign), NOBODY, NOBODY)
    with pytest.raises(ClientFileError, match="belongs to uid {}".format(NOBODY)):
        IPCHost(client_file=str(foreign / "ipc.json")).start()


def test_sdk_refuses_a_client_file_another_user_could_have_replaced(tmp_path, model_dir):
    proc, info, env = start_serve(tmp_path, model_dir)
    ipc = Path(env["GG_ML_IPC_FILE"])
    try:
        assert sdk_call(str(ipc))[0] == 0
        assert stat.S_IMODE(ipc.stat().st_mode) == 0o600
        # the attack: the directory became writable by others (a swap is now possible)
        tmp_path.chmod(0o777)
        code, out = sdk_call(str(ipc))
        assert code == 3 and "writable by others" in out and "GreengrassDependencyException" in out
        tmp_path.chmod(0o700)
        # another user's directory above the file
        attic = tmp_path / "attic"
        attic.mkdir()
        planted = attic / "ipc.json"
        planted.write_text(ipc.read_text())
        planted.chmod(0o600)
        os.chown(str(attic), NOBODY, NOBODY)
        code, out = sdk_call(str(planted))
        assert code == 3 and "belongs to uid {}".format(NOBODY) in out, out
        # a symbolic link in place of the file
        link = tmp_path / "link.json"
        link.symlink_to(ipc)
        code, out = sdk_call(str(link))
        assert code == 3 and "symbolic link" in out, out
    finally:
        tmp_path.chmod(0o700)
        assert proc.stop() == 0, proc.log()


def _verdicts(path):
    """The SDK's and the host's verdict on a client file: they must always agree."""
    sys.path.insert(0, os.path.join(str(ROOT), "ml_sdk"))
    try:
        from greengrass_machine_learning_sdk import _endpoint
    finally:
        sys.path.pop(0)
    sdk, host = _endpoint.unsafe_reason(str(path)), clientfile.unsafe_reason(str(path))
    assert sdk == host, (sdk, host)
    return sdk


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")
def test_a_client_file_another_user_made_under_tmp_is_refused(tmp_path):
    """Another user creates /tmp/<name>/ipc.json (both theirs, modes 0755/0644) before the
    service: nothing is writable by anyone else, but /tmp let them make it. Refused; the same
    files under directories only root can write (the service user's /run/<name>) are trusted."""
    attic = tmp_path / "attic"
    attic.mkdir(mode=0o755)
    planted = attic / "ipc.json"
    planted.write_text("{}")
    planted.chmod(0o644)
    os.chown(str(planted), NOBODY, NOBODY)
    os.chown(str(attic), NOBODY, NOBODY)
    reason = _verdicts(planted)
    assert reason is not None and "another user could have made it first" in reason, reason
    if not os.access("/run", os.W_OK):
        pytest.skip("/run is not writable here")
    run = Path(tempfile.mkdtemp(dir="/run"))
    try:
        run.chmod(0o755)
        service = run / "svc"
        service.mkdir(mode=0o755)
        (service / "ipc.json").write_text("{}")
        (service / "ipc.json").chmod(0o644)
        os.chown(str(service / "ipc.json"), NOBODY, NOBODY)
        os.chown(str(service), NOBODY, NOBODY)
        assert _verdicts(service / "ipc.json") is None
    finally:
        shutil.rmtree(str(run))


def test_the_directories_of_a_client_file_are_judged_where_they_really_are(tmp_path):
    """A link among the directories leads elsewhere: what is judged is where it leads, so a
    directory others can write behind a link is seen."""
    tmp_path.chmod(0o700)
    wide = tmp_path / "wide"
    wide.mkdir()
    wide.chmod(0o777)
    (wide / "dir").mkdir(mode=0o700)
    (wide / "dir" / "ipc.json").write_text("{}")
    (wide / "dir" / "ipc.json").chmod(0o600)
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o700)
    (safe / "alias").symlink_to(wide / "dir")
    reason = _verdicts(safe / "alias" / "ipc.json")
    assert reason is not None and "{} is writable by others".format(wide) in reason, reason
    wide.chmod(0o700)
    assert _verdicts(safe / "alias" / "ipc.json") is None


def test_several_services_keep_their_own_entries(tmp_path, model_dir):
    ipc = tmp_path / "ipc.json"
    procs = {}
    try:
        for name in ("detectorA", "detectorB"):
            cfg = params_file(tmp_path / (name + ".json"), model_dir, name=name)
            procs[name] = Proc(["serve", "--config", str(cfg), "--port", "0"], clean_env(ipc),
                               tmp_path / (name + ".log"))
            info = wait_for_client_file(ipc, procs[name], name=name)
            wait_ready(info["port"], procs[name])
        assert set(clientfile.entries(str(ipc))) == {"detectorA", "detectorB"}
        for name in procs:
            code, out = sdk_call(str(ipc), name)
            assert code == 0, out
        # a second service of the same name fails, one line, and touches nothing
        before = ipc.read_bytes()
        cfg = params_file(tmp_path / "dup.json", model_dir, name="detectorA")
        dup = subprocess.run([sys.executable, "-m", "connector", "serve", "--config", str(cfg),
                              "--port", "0"], env=clean_env(ipc), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, timeout=60)
        assert dup.returncode == 2
        lines = dup.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "another host named 'detectorA'" in lines[0], lines
        assert ipc.read_bytes() == before
        assert sdk_call(str(ipc), "detectorA")[0] == 0
        # stopping one leaves the other's entry alone
        assert procs.pop("detectorA").stop() == 0
        assert set(clientfile.entries(str(ipc))) == {"detectorB"}
        assert sdk_call(str(ipc), "detectorB")[0] == 0
    finally:
        for proc in procs.values():
            proc.stop()
    assert not ipc.exists()


def test_a_stale_entry_is_recognised_and_taken_over(tmp_path):
    ipc = str(tmp_path / "ipc.json")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    clientfile.publish(ipc, "objectDetection", "127.0.0.1", 1, "old-token", "us-east-1")
    document = json.loads(open(ipc).read())
    document["services"]["objectDetection"]["pid"] = dead.pid
    Path(ipc).write_text(json.dumps(document))
    Path(ipc).chmod(0o600)
    code, out = sdk_call(ipc)
    assert code == 3 and "stale" in out and str(dead.pid) in out, out
    with IPCHost(client_file=ipc, name="objectDetection") as host:
        assert clientfile.read(ipc, "objectDetection")["token"] == host.token


def test_garbage_planted_at_the_client_file_is_replaced_not_a_traceback(tmp_path):
    ipc = tmp_path / "ipc.json"
    ipc.write_bytes(b"\xff\xfe not json")
    ipc.chmod(0o600)
    with IPCHost(client_file=str(ipc)) as host:
        assert clientfile.read(str(ipc))["port"] == host.port


# -- point 6: health that tells the truth and leaks nothing ---------------------------------------

def test_a_dead_idle_worker_is_noticed_at_once_and_health_leaks_nothing(tmp_path, model_dir):
    # One worker: with more, the service stays ready on the others while the dead one is replaced.
    proc, info, env = start_serve(tmp_path, model_dir, env_extra={"CONNECTOR_INFERENCE_WORKERS": "1"})
    try:
        port, token = info["port"], info["token"]
        status, doc = healthz(port, token)
        assert status == 200 and doc["worker"]["state"] == "ready"
        pid = doc["worker"]["worker_pid"]
        os.kill(pid, signal.SIGKILL)
        # no request is made: the supervisor notices by itself
        deadline = time.monotonic() + 3.0
        seen = None
        while time.monotonic() < deadline:
            status, doc = healthz(port, token)
            if doc["worker"].get("worker_pid") != pid or doc["worker"]["state"] != "ready":
                seen = doc
                break
            time.sleep(0.02)
        assert seen is not None, "the dead worker was still reported ready after 3 s"
        assert healthz(port, path="/livez")[0] == 200  # alive all along
        deadline = time.monotonic() + 30
        while healthz(port, path="/readyz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, doc = healthz(port, token)
        assert doc["worker"]["crashes"] == 1 and doc["worker"]["worker_pid"] not in (None, pid)
        # a failed reload leaves an error with a path in it: only the token sees it
        meta = Path(model_dir) / "model.yaml"
        had = meta.read_bytes() if meta.exists() else None
        meta.write_text("a: [unclosed\n")
        try:
            proc.popen.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while healthz(port, token)[1]["worker"].get("reload_failures", 0) < 1:
                assert time.monotonic() < deadline, proc.log()
                time.sleep(0.1)
        finally:
            if had is None:
                meta.unlink()
            else:
                meta.write_bytes(had)
        status, private = healthz(port, token)
        assert status == 200 and "not valid YAML" in private["worker"]["last_error"]
        assert len(private["worker"]["last_error"]) < 700
        # without a token: the status only (no ARN, model id, pids, counters or errors)
        assert healthz(port) == (200, {"status": "ok"})
        assert healthz(port, "wrong-token") == (200, {"status": "ok"})
    finally:
        assert proc.stop() == 0, proc.log()


# -- point 8: start-up problems are one line each ------------------------------------------------

def run_serve(tmp_path: Path, model_dir: Path, *args: str, env_extra=None, cfg=None):
    extra = dict(env_extra or {})
    ipc = Path(extra.pop("GG_ML_IPC_FILE", str(tmp_path / "ipc.json")))
    cfg = cfg or params_file(tmp_path / "params.json", model_dir)
    env = clean_env(ipc, **extra)
    return subprocess.run([sys.executable, "-m", "connector", "serve", "--config", str(cfg), *args],
                          env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=60)


def one_line(result) -> str:
    text = result.stderr.decode()
    assert result.returncode == 2, text
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_start_up_problems_are_one_clear_line_each(tmp_path, model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        line = one_line(run_serve(tmp_path, model_dir, "--port", str(busy.getsockname()[1])))
        assert "cannot listen on 127.0.0.1:{}".format(busy.getsockname()[1]) in line
        assert "in use" in line
    line = one_line(run_serve(tmp_path, model_dir, "--port", "0", "--bind", "192.0.2.1"))
    assert "cannot listen on 192.0.2.1" in line
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    line = one_line(run_serve(tmp_path, model_dir, "--port", "0",
                              env_extra={"GG_ML_IPC_FILE": str(a_file / "ipc.json")}))
    assert "cannot create the client-file directory" in line
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    line = one_line(run_serve(tmp_path, model_dir, "--port", "0",
                              env_extra={"GG_ML_IPC_FILE": str(shared / "ipc.json")}))
    assert "unsafe client file location" in line and "chmod go-w" in line
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("LocalInferenceServiceName: d\xe9tecteur\n".encode("latin-1"))
    line = one_line(run_serve(tmp_path, model_dir, "--port", "0", cfg=latin1))
    assert "not UTF-8" in line
    nul = tmp_path / "nul.json"
    nul.write_text(json.dumps({"MLModelDestinationPath": "/models/a\u0000b", "MLModelResourceId": "m",
                               "LocalInferenceServiceName": "svc",
                               "LocalInferenceServiceMemoryLimitKB": "500000"}))
    line = one_line(run_serve(tmp_path, model_dir, "--port", "0", cfg=nul))
    assert "NUL" in line and "MLModelDestinationPath" in line
    line = one_line(run_serve(tmp_path, model_dir, env_extra={"GG_DAEMON_PORT": "80\u00b2"}))
    assert "GG_DAEMON_PORT" in line


def test_a_group_may_be_let_in_to_read_the_client_file_never_the_function_tokens(tmp_path):
    ipc = tmp_path / "ipc.json"
    with IPCHost(client_file=str(ipc), client_file_group=str(NOBODY)) as host:
        host.register_function(ARN, served=False)
        st = ipc.stat()
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == NOBODY
        functions = Path(str(ipc) + ".functions").stat()
        assert stat.S_IMODE(functions.st_mode) == 0o600 and functions.st_gid != NOBODY


def test_the_sdk_gives_up_after_the_services_timeout_when_the_host_hangs(tmp_path):
    """A host that accepts and never answers: the SDK's default timeout (the service's timeout
    from the client file + 5 s) ends the call; before, it waited forever."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        ipc = tmp_path / "ipc.json"
        entry = clientfile.publish(str(ipc), "objectDetection", "127.0.0.1", silent.getsockname()[1],
                                   "t", "us-east-1", timeout_s=1)
        assert entry["timeout_s"] == 1
        started = time.monotonic()
        code, out = sdk_call(str(ipc))
        took = time.monotonic() - started
    assert code == 3 and "GreengrassDependencyException" in out and "timed out" in out, out
    assert took < 30, took  # 1 s + the 5 s margin, on a busy machine


def test_start_time_a_few_ticks_off_is_the_same_process(tmp_path):
    """Under qemu-user a host reads its own start time from qemu, a few ticks after the kernel's
    (seen in the ARM chroots: 2); readers must still take the entry, in the SDK as in the host."""
    from greengrass_machine_learning_sdk import _endpoint
    now = clientfile.process_start(os.getpid())
    assert now is not None
    for module in (clientfile, _endpoint):
        assert module.is_alive({"pid": os.getpid(), "started": now + 2})
        assert module.is_alive({"pid": os.getpid(), "started": now - 2})
        assert not module.is_alive({"pid": os.getpid(), "started": now + 60 * os.sysconf("SC_CLK_TCK")})


def test_an_oversized_function_token_file_is_refused_by_its_size(tmp_path):
    """Read at most MAX_FILE_BYTES: a planted file of any size costs one bounded read and a
    message that names it, not a JSON error about a cut-off document."""
    ipc = tmp_path / "ipc.json"
    functions = tmp_path / ("ipc.json" + clientfile.FUNCTIONS_SUFFIX)
    functions.write_bytes(b'{"functions": {}, "pad": "' + b"x" * clientfile.MAX_FILE_BYTES + b'"}')
    functions.chmod(0o600)
    with pytest.raises(ValueError, match="larger than {} bytes; not a function-token file".format(
            clientfile.MAX_FILE_BYTES)):
        clientfile.function_token(str(ipc), "arn:aws:lambda:us-east-1:aws:function:f")
    functions.write_bytes(b'{"functions": {}}')
    assert clientfile.function_token(str(ipc), "arn:aws:lambda:us-east-1:aws:function:f") is None
