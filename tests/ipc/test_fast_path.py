"""The fast path's socket and frames (issue 20): advertised in the host's client-file entry, as
private as the client file, replaced safely when a dead host left it, never a planted thing, and
withdrawn at shutdown; the frame codec of the host and the SDK's copy agree byte for byte."""
from __future__ import annotations

import grp
import json
import logging
import os
import socket
import stat
import sys
import threading

import pytest

from connector.ipc import IPCHost, clientfile, protocol, run_lambda
from connector.ipc.clientfile import ClientFileError
from connector.ipc.fast import frames, socketfile
from connector.ipc.local import BoardClient
from tests.fast_client import FastConnection, error_of
from tests.service_process import Proc, clean_env, wait_for_client_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "ml_sdk"))
from greengrass_machine_learning_sdk import _fast  # noqa: E402

REGION = "eu-west-1"
NAME = "objectDetection"
ARN = protocol.inference_function_arn(REGION, "object-detection", NAME)
NOBODY = 65534


def echo(event, context):
    if event == b"fail":
        raise ValueError("image is truncated")
    return {"Body": event.decode("latin-1").upper(), "ContentType": "application/json"}


class Served(object):
    """A host with a client file in `directory`, ARN served in-process by `echo`."""

    def __init__(self, directory, name=NAME, **host_args):
        host_args.setdefault("result_timeout_s", 5.0)
        self.client_file = str(directory / "ipc.json")
        self.host = IPCHost(client_file=self.client_file, region=REGION, name=name, **host_args).start()
        self.host.register_function(ARN)
        self.stop = threading.Event()
        self.loop = threading.Thread(target=run_lambda, args=(ARN, echo, BoardClient(self.host.board)),
                                     kwargs={"stop_event": self.stop, "concurrency": 2}, daemon=True)
        self.loop.start()

    def entry(self):
        return clientfile.read(self.client_file, self.host.name)

    def close(self):
        self.stop.set()
        self.host.shutdown(grace_s=1.0)
        self.loop.join(5)


@pytest.fixture
def served(tmp_path):
    s = Served(tmp_path)
    yield s
    s.close()


def test_the_host_advertises_a_private_socket_beside_the_client_file(served, tmp_path):
    fast = served.entry()["fast"]
    assert fast == {"unix": served.host.fast_path, "protocol": frames.VERSION}
    assert os.path.dirname(fast["unix"]) == str(tmp_path)
    assert os.path.basename(fast["unix"]) == "ipc.json.{}.sock".format(NAME)  # named after the entry
    st = os.lstat(fast["unix"])
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]  # no temporary left
    with FastConnection(fast["unix"]) as connection:
        answer = connection.invoke(served.host.token, ARN, b"abc")
    assert (answer.call, answer.status, answer.reason) == (frames.CALL_GET_WORK_RESULT, 200, "OK")
    assert json.loads(answer.payload) == {"Body": "ABC", "ContentType": "application/json"}


def test_a_client_file_group_gets_a_socket_it_may_use_and_nobody_else(tmp_path):
    group = grp.getgrgid(os.getgid()).gr_name
    s = Served(tmp_path, client_file_group=group)
    try:
        st = os.lstat(s.host.fast_path)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()
        assert stat.S_IMODE(os.stat(s.client_file).st_mode) == 0o640  # as private as the file
    finally:
        s.close()


def test_shutdown_withdraws_the_entry_and_unlinks_the_socket(tmp_path):
    s = Served(tmp_path)
    path = s.host.fast_path
    with FastConnection(path) as connection:
        assert connection.invoke(s.host.token, ARN).status == 200
        s.close()
        assert connection.closed()  # the host hung up its open connections
    assert not os.path.exists(path) and not os.path.exists(s.client_file)
    assert s.host.fast_path is None


def test_a_stale_socket_a_dead_host_left_is_replaced(tmp_path):
    path = socketfile.path_for(str(tmp_path / "ipc.json"), NAME)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # bound, never listened, closed without unlinking: what a killed host leaves
    stale.close()
    old = os.lstat(path).st_ino
    s = Served(tmp_path)
    try:
        assert s.host.fast_path == path and os.lstat(path).st_ino != old
        with FastConnection(path) as connection:
            assert connection.invoke(s.host.token, ARN).status == 200
    finally:
        s.close()


def plant(kind, path, tmp_path):
    """Put something that is not this user's socket where the socket goes; return a check that
    it is still there, untouched."""
    if kind == "link":
        target = tmp_path / "elsewhere"
        target.write_text("keep me")
        os.symlink(str(target), path)
        return lambda: os.readlink(path) == str(target) and target.read_text() == "keep me"
    if kind == "file":
        with open(path, "w") as handle:
            handle.write("keep me")
        return lambda: open(path).read() == "keep me"
    if kind == "directory":
        os.mkdir(path)
        return lambda: os.path.isdir(path) and not os.path.islink(path)
    other = socket.socket(socket.AF_UNIX)  # another user's socket (root made it theirs)
    other.bind(path)
    other.close()
    os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    inode = os.lstat(path).st_ino
    return lambda: os.lstat(path).st_ino == inode and os.lstat(path).st_uid == NOBODY


@pytest.mark.parametrize("kind", ["link", "file", "directory", "another user's socket"])
def test_planted_things_where_the_socket_goes_are_left_alone_and_the_fast_path_is_off(
        tmp_path, kind, caplog):
    if kind == "another user's socket" and os.geteuid() != 0:
        pytest.skip("making a socket another user's needs root")
    path = socketfile.path_for(str(tmp_path / "ipc.json"), NAME)
    untouched = plant(kind, path, tmp_path)
    with caplog.at_level(logging.WARNING, logger="connector.ipc.host"):
        s = Served(tmp_path)
    try:
        assert "fast" not in s.entry() and s.host.fast_path is None
        assert untouched()
        assert "the fast path is off" in caplog.text and path in caplog.text
        assert "not a socket this user made" in caplog.text
        client = s.host.client(timeout=5)  # the V1 exchange serves as ever
        assert client.get_work_result(ARN, client.post_work(ARN, b"v1")).payload
    finally:
        s.close()
    assert untouched()  # shutdown removes only its own socket


def test_a_live_hosts_socket_is_never_replaced(tmp_path):
    ipc = tmp_path / "ipc.json"
    live = Proc(["host", "--name", NAME, "--port", "0"], clean_env(ipc), tmp_path / "host.log")
    try:
        entry = wait_for_client_file(ipc, live, name=NAME)
        path = entry["fast"]["unix"]
        before = os.lstat(path).st_ino
        with pytest.raises(ClientFileError, match="is running and owns its entry"):
            IPCHost(client_file=str(ipc), region=REGION, name=NAME).start()
        assert os.lstat(path).st_ino == before  # its socket was not touched
        with FastConnection(path) as connection:  # and still answers (nothing served: 404)
            assert connection.invoke(entry["token"], ARN).status == 404
    finally:
        assert live.stop() == 0
    assert not os.path.exists(path)


def test_an_entry_name_never_becomes_a_path(tmp_path):
    s = Served(tmp_path, name="../../escape/me")
    try:
        assert os.path.dirname(s.host.fast_path) == str(tmp_path)
        assert "/" not in os.path.basename(s.host.fast_path)[len("ipc.json."):]
    finally:
        s.close()


def test_a_path_longer_than_a_socket_address_is_reached_through_its_directory(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True, mode=0o700)
    s = Served(deep)
    path = s.host.fast_path
    try:
        assert len(path.encode()) > socketfile.MAX_ADDRESS_BYTES
        assert stat.S_IMODE(os.lstat(s.host.fast_path).st_mode) == 0o600
        fast = _fast.offered(s.entry(), s.client_file)
        connection = _fast.connect(fast, 5.0)  # the SDK's way: through /proc/self/fd/<dir>
        try:
            answer = _fast.exchange(connection, _fast.request_parts(s.host.token, ARN, "", b"long"))
        finally:
            connection.close()
        assert answer.status == 200 and json.loads(answer.payload)["Body"] == "LONG"
    finally:
        s.close()
    assert not os.path.exists(path)


def test_a_host_asked_for_no_fast_path_offers_none(tmp_path):
    s = Served(tmp_path, fast=False)
    try:
        assert "fast" not in s.entry() and s.host.fast_path is None
        assert not [n for n in os.listdir(tmp_path) if n.endswith(".sock")]
    finally:
        s.close()


# -- the frames ---------------------------------------------------------------------------------

def test_the_frame_codec_agrees_with_the_sdks_copy():
    for name in ("REQUEST_MAGIC", "ANSWER_MAGIC", "OP_INVOKE", "FLAG_CLOSING", "CALL_FRAME",
                 "CALL_POST_WORK", "CALL_GET_WORK_RESULT", "MAX_TOKEN_BYTES", "MAX_ARN_BYTES"):
        assert getattr(_fast, name) == getattr(frames, name), name
    assert _fast.PROTOCOL == frames.VERSION
    assert _fast.REQUEST_HEADER.format == frames.REQUEST_HEADER.format
    assert _fast.ANSWER_HEADER.format == frames.ANSWER_HEADER.format
    for token, arn, context, payload in (("t", ARN, "e30=", b""), ("x" * 4096, "a" * 300, "", b"\0" * 70000)):
        assert _fast.request(token, arn, context, payload) == frames.request(
            token.encode(), arn.encode(), context.encode(), payload)
    a, b = socket.socketpair()
    try:
        sent = frames.answer(frames.CALL_POST_WORK, 503, "Service Unavailable", b'{"x": 1}',
                             "ServiceStarting", "", "1", closing=True)
        a.sendall(sent)
        got = _fast.exchange(b, [])
        assert tuple(got) == tuple(frames.parse_answer(sent))
        assert got.flags == frames.FLAG_CLOSING and got.retry_after == "1"
    finally:
        a.close()
        b.close()


def test_function_errors_and_refusals_travel_as_the_v1_exchange_says_them(served):
    with FastConnection(served.host.fast_path) as connection:
        handled = connection.invoke(served.host.token, ARN, b"fail")
        assert (handled.status, handled.function_error) == (200, protocol.FUNCTION_ERROR_HANDLED)
        assert json.loads(handled.payload) == {"errorMessage": "image is truncated",
                                               "errorType": "ValueError"}
        missing = connection.invoke(served.host.token, ARN.replace(NAME, "nobody"))
        assert (missing.call, missing.status, missing.error_type) == (
            frames.CALL_POST_WORK, 404, "ResourceNotFoundException")
        assert "no function serves" in error_of(missing)["errorMessage"]
        assert missing.flags == 0  # read whole: the connection stays
        assert connection.invoke(served.host.token, ARN, b"still").status == 200
