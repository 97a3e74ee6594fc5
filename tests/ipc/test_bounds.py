"""The host's bounds, each on its own with small numbers, over real loopback HTTP (issue 9, point 3):
connection cap with eviction, whole deadlines for the head and the body, the budget of bodies being
read, the queue bound (Event invocations included), and payloads released when work finishes."""
from __future__ import annotations

import http.client
import socket
import threading
import time

import pytest

from connector.ipc import IPCClient, IPCError, protocol
from connector.ipc.host import HostLimits, IPCHost
from tests.ipc.helpers import closed_within

ARN = protocol.inference_function_arn("us-east-1", "object-detection", "bounds")


def post(host: IPCHost, body: bytes, kind: str = "RequestResponse") -> "tuple[int, bytes]":
    connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=10)
    try:
        connection.request("POST", protocol.function_path(ARN), body=body, headers={
            "Authorization": host.token, protocol.HEADER_INVOCATION_TYPE: kind})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_request_head_has_a_whole_deadline_not_an_idle_timer():
    with IPCHost(write_client_file=False, limits=HostLimits(head_timeout_s=1.0)) as host:
        with socket.create_connection(("127.0.0.1", host.port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            took = closed_within(sock, 10, trickle=b"X")  # a byte every 0.3 s gains nothing
        assert took < 5
        assert host.guard.counters["head_timeouts"] == 1


def test_the_body_has_a_deadline_and_stalled_bodies_are_dropped():
    with IPCHost(write_client_file=False, limits=HostLimits(body_timeout_s=1.0)) as host:
        host.register_function(ARN)
        with socket.create_connection(("127.0.0.1", host.port)) as sock:
            sock.sendall("POST {} HTTP/1.1\r\nAuthorization: {}\r\nContent-Length: 1000\r\n\r\n"
                         .format(protocol.function_path(ARN), host.token).encode() + b"x" * 10)
            assert closed_within(sock, 10) < 5
        assert host.guard.counters["body_timeouts"] == 1
        assert host.board.pending_count() == 0


def test_bodies_being_read_share_a_budget():
    with IPCHost(write_client_file=False, limits=HostLimits(max_body_bytes=1000, max_reading_bytes=1500)) as host:
        host.register_function(ARN)
        with socket.create_connection(("127.0.0.1", host.port)) as stalled:
            stalled.sendall("POST {} HTTP/1.1\r\nAuthorization: {}\r\nContent-Length: 1000\r\n\r\n"
                            .format(protocol.function_path(ARN), host.token).encode())
            time.sleep(0.3)  # its 1000 bytes are reserved now
            status, text = post(host, b"y" * 900)
            assert status == 429 and b"busy receiving" in text
            assert post(host, b"z" * 400)[0] == 202  # what still fits is accepted
        time.sleep(0.5)
        assert post(host, b"y" * 900)[0] == 202  # released when the stalled one went away


def test_queued_invocations_are_bounded_event_ones_included_and_released_when_done():
    with IPCHost(write_client_file=False, limits=HostLimits(
            max_queued=3, max_queued_bytes=10_000, max_body_bytes=5_000)) as host:
        host.register_function(ARN)
        for _ in range(3):
            assert post(host, b"e" * 100, "Event")[0] == 202
        status, text = post(host, b"e", "Event")
        assert status == 429 and b"3 invocation(s)" in text and b"retry later" in text
        worker = host.client(timeout=5, function_arn=ARN)
        for _ in range(3):  # the worker drains them; each payload is released once answered
            work = worker.get_work(ARN)
            worker.post_work_result(ARN, work.invocation_id, b"")
        assert post(host, b"e" * 4_500, "Event")[0] == 202
        assert post(host, b"e" * 4_500, "Event")[0] == 202
        status, text = post(host, b"e" * 2_000, "Event")  # 11_000 bytes would be queued
        assert status == 429 and b"bytes" in text
        assert host.board.counters(ARN)["busy"] == 2


def test_connections_beyond_the_cap_evict_idle_ones_or_are_refused_at_once():
    with IPCHost(write_client_file=False, limits=HostLimits(max_connections=4, head_timeout_s=30)) as host:
        host.set_ready()
        idle = [socket.create_connection(("127.0.0.1", host.port)) for _ in range(4)]
        time.sleep(0.2)
        # a real request still gets in: the oldest idle connection makes room
        connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=5)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        assert host.guard.counters["evicted"] >= 1
        assert host.guard.describe()["open"] <= 4
        connection.close()
        for sock in idle:
            sock.close()
        # when every connection is busy (long polls), a new one is answered 503 at once
        token = host.register_function(ARN, served=False)
        polls = []
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", host.port))
            sock.sendall("GET {} HTTP/1.1\r\nAuthorization: {}\r\n\r\n".format(
                protocol.function_path(ARN, "work"), token).encode())
            polls.append(sock)
        # under load the host may not yet have let go of the closed idle connections: wait until
        # only the four polls are open, or the next connection would evict one of those instead
        deadline = time.monotonic() + 30
        while host.board._functions[ARN].open_polls < 4 or host.guard.describe()["open"] > 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(IPCError) as e:
            IPCClient("127.0.0.1", host.port, host.token, timeout=5).post_work(ARN, b"x")
        assert e.value.status == 503 and "busy" in str(e.value)
        assert host.guard.counters["refused_busy"] >= 1
        for sock in polls:
            sock.close()


def test_refused_requests_trickling_their_bodies_cannot_hold_the_slots():
    """A peer with no token: each POST is refused (401) before its body is read, and the host then
    drains what the client still sends, for up to 2 s. Connections that trickle their bodies meanwhile
    must not fill the cap: a drained connection is the first a new one evicts."""
    limits = HostLimits(max_connections=4, head_timeout_s=30)
    with IPCHost(write_client_file=False, limits=limits) as host:
        host.set_ready()
        host.register_function(ARN)
        trickling = []
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", host.port))
            sock.sendall("POST {} HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n".format(
                protocol.function_path(ARN)).encode() + b"x" * 10)
            trickling.append(sock)
        for sock in trickling:  # each is answered 401 at once, then drained
            sock.settimeout(5)
            assert sock.recv(4096).startswith(b"HTTP/1.1 401")
        stop = threading.Event()

        def trickle():  # faster than the drain's 0.25 s of allowed silence
            while not stop.is_set():
                for sock in trickling:
                    try:
                        sock.sendall(b"x" * 10)
                    except OSError:
                        pass
                stop.wait(0.05)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            assert host.guard.describe()["open"] == 4
            connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=5)
            connection.request("GET", "/healthz", headers={"Authorization": host.token})
            assert connection.getresponse().status == 200
            assert host.guard.counters["evicted"] >= 1 and host.guard.counters["refused_busy"] == 0
            connection.close()
        finally:
            stop.set()
            thread.join(5)
        for sock in trickling:
            sock.close()
