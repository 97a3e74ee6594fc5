"""Overload and resource attacks on a real `serve` process (issue 9, points 3 and 4).

Point 3: hundreds of slow connections under a low open-files limit, floods of large Event posts
and stalled large uploads: a normal client's call keeps succeeding, /healthz keeps answering,
serve's resident memory stays below the README's ceiling and returns near idle afterwards.

Point 4: more callers than the worker can serve in time: every caller that is not answered gets
the documented timeout message, /healthz counts each of them, callers that hang up early never
reach the worker, and the worker spends (almost) no time on results nobody reads.
No wall-clock time is asserted beyond generous liveness bounds.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from connector.ipc import IPCClient, IPCError, protocol
from connector.ipc.http.guard import DEFAULT_MAX_READING_BYTES, FD_RESERVE
from connector.ipc.workboard import DEFAULT_MAX_QUEUED_BYTES
from connector.supervision.memory import resident_kb
from tests import images
from tests.dlr_fixture.build import RED, blank_image, draw_box, set_trigger, sleep_pixel
from tests.service_process import healthz, start_serve

CONTEXT = protocol.encode_client_context({"Content-Type": "image/png"})
# README "Limits": serve's resident memory stays below idle + this under the attacks.
CEILING_ABOVE_IDLE_KB = (DEFAULT_MAX_READING_BYTES + DEFAULT_MAX_QUEUED_BYTES) // 1024 + 64 * 1024
# ... and within this of idle once they are over.
SETTLED_ABOVE_IDLE_KB = 32 * 1024


def red_png(slow_tenths: int = 0) -> bytes:
    img = draw_box(blank_image(), RED, 64, 128, 256, 384)
    if slow_tenths:
        img = set_trigger(img, sleep_pixel(slow_tenths))
    return images.png(img)


class MemoryWatch(threading.Thread):
    """Samples a process's VmRSS every 20 ms; .peak_kb."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self._done = pid, 0, threading.Event()
        self.start()

    def run(self) -> None:
        while not self._done.wait(0.02):
            self.peak_kb = max(self.peak_kb, resident_kb(self.pid) or 0)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak_kb


def settled_kb(pid: int, seconds: float = 8.0) -> int:
    """The lowest VmRSS seen over a few seconds (threads and buffers are let go meanwhile)."""
    low, deadline = None, time.monotonic() + seconds
    while time.monotonic() < deadline:
        kb = resident_kb(pid) or 0
        low = kb if low is None else min(low, kb)
        time.sleep(0.1)
    return low or 0


def normal_call(port: int, token: str, arn: str) -> dict:
    client = IPCClient("127.0.0.1", port, token, timeout=30)
    out = client.get_work_result(arn, client.post_work(arn, red_png(), CONTEXT))
    assert out.func_err is None, out.payload
    return json.loads(json.loads(out.payload)["Body"])


def post_raw(port: int, token: str, arn: str, size: int, send: int, kind: str = "Event",
             hold: "threading.Event | None" = None) -> "tuple[int, bytes]":
    """A post_work declaring `size` bytes and sending `send` of them; waits for `hold` before
    reading the answer (a stalled upload), returns (status or 0, first bytes of the answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        head = ("POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\n"
                "X-Amz-Invocation-Type: {}\r\nX-Amz-Client-Context: {}\r\n\r\n").format(
            protocol.function_path(arn), token, size, kind, CONTEXT).encode()
        sock.sendall(head)
        chunk = b"\0" * (1 << 20)
        sent = 0
        try:
            while sent < send:
                sock.sendall(chunk[:min(len(chunk), send - sent)])
                sent += min(len(chunk), send - sent)
        except OSError:
            pass  # refused early and closed: the answer is what counts
        if hold is not None:
            hold.wait(60)
            sock.settimeout(0.5)  # a refusal came at once; an admitted stall gets no answer
        answer = b""
        try:
            while not _complete(answer):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except OSError:
            pass
        status = int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else 0
        return status, answer
    finally:
        sock.close()


def _complete(response: bytes) -> bool:
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return True


def test_slow_connections_and_floods_leave_the_service_usable_and_bounded(tmp_path, model_dir):
    nofile = 256
    proc, info, env = start_serve(tmp_path, model_dir, nofile=nofile)
    port, token = info["port"], info["token"]
    arn = protocol.inference_function_arn(info["region"], "object-detection", "objectDetection")
    pid = proc.popen.pid
    slow = []
    try:
        normal_call(port, token, arn)
        idle_kb = settled_kb(pid, 2.0)
        watch = MemoryWatch(pid)

        # 1. Slow loris: 300 connections, each trickling its request head, under 256 files.
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            slow.append(sock)
        for sock in slow:
            try:
                sock.sendall(b"X")
            except OSError:
                pass  # evicted: the host hung up on it
        for _ in range(5):
            assert normal_call(port, token, arn)["prediction"]
            assert healthz(port)[0] == 200
        status, doc = healthz(port, token)
        assert doc["connections"]["open"] <= nofile - FD_RESERVE, doc
        assert doc["connections"]["evicted"] > 0, doc

        # 2. Sixty fire-and-forget posts of 10 MB: a few are queued, the rest refused at once.
        with ThreadPoolExecutor(12) as pool:
            flood = list(pool.map(lambda _: post_raw(port, token, arn, 10 << 20, 10 << 20),
                                  range(60)))
        statuses = [s for s, _ in flood]
        assert statuses.count(429) > 0 and set(statuses) <= {202, 429, 0}, statuses
        assert all(b"busy" in a for s, a in flood if s == 429)
        assert normal_call(port, token, arn)["prediction"]

        # 3. Thirty uploads of 15 MB stalled one byte short, held open while a normal call runs.
        hold = threading.Event()
        with ThreadPoolExecutor(30) as pool:
            stalled = [pool.submit(post_raw, port, token, arn, 15 << 20, (15 << 20) - 1, "Event", hold)
                       for _ in range(30)]
            time.sleep(2.0)
            assert normal_call(port, token, arn)["prediction"]
            assert healthz(port)[0] == 200
            hold.set()
            refused = [f.result()[0] for f in stalled]
        assert refused.count(429) > 0, refused

        peak_kb = watch.stop()
        for sock in slow:
            sock.close()
        slow = []
        after_kb = settled_kb(pid)
        assert peak_kb - idle_kb < CEILING_ABOVE_IDLE_KB, (idle_kb, peak_kb)
        assert after_kb - idle_kb < SETTLED_ABOVE_IDLE_KB, (idle_kb, peak_kb, after_kb)
        assert normal_call(port, token, arn)["prediction"]
        print("serve RSS: idle {} KB, peak {} KB, after {} KB".format(idle_kb, peak_kb, after_kb))
    finally:
        for sock in slow:
            sock.close()
        assert proc.stop() == 0, proc.log()[-3000:]


def test_deadlines_travel_with_the_work(tmp_path, model_dir):
    timeout_s = 3
    proc, info, env = start_serve(tmp_path, model_dir, timeout=timeout_s)
    port, token = info["port"], info["token"]
    arn = protocol.inference_function_arn(info["region"], "object-detection", "objectDetection")
    slow_image = red_png(slow_tenths=5)  # 0.5 s of worker time each
    try:
        def patient(_):
            client = IPCClient("127.0.0.1", port, token, timeout=30)
            out = client.get_work_result(arn, client.post_work(arn, slow_image, CONTEXT))
            return out.func_err, protocol.error_message_of(out.payload) if out.func_err else ""

        def impatient(_):
            invocation = IPCClient("127.0.0.1", port, token, timeout=30).post_work(
                arn, slow_image, CONTEXT)
            waiter = IPCClient("127.0.0.1", port, token, timeout=1.0)  # gives up after 1 s
            try:
                waiter.get_work_result(arn, invocation)
            except IPCError:
                return "gave up"
            return "answered"

        with ThreadPoolExecutor(48) as pool:
            patient_f = [pool.submit(patient, i) for i in range(40)]
            impatient_f = [pool.submit(impatient, i) for i in range(8)]
            outcomes = [f.result() for f in patient_f]
            quitters = [f.result() for f in impatient_f]
        answered = [o for o in outcomes if o[0] is None]
        failed = [o for o in outcomes if o[0] is not None]
        assert answered and failed, outcomes
        message = "no answer within LocalInferenceServiceTimeoutSeconds={} s".format(timeout_s)
        assert all(message in text for _, text in failed), failed[:3]
        time.sleep(1.0)  # let the worker finish what it holds
        status, doc = healthz(port, token)
        assert doc["board"]["timeouts"] == len(failed), (doc, len(failed))
        gave_up = quitters.count("gave up")
        assert doc["board"]["abandoned"] == gave_up, (doc, quitters)
        # Nearly every result the worker computed was read: only one that was sent in time and
        # took longer than the ones before it can finish after its caller's deadline.
        assert doc["board"]["late_results"] <= 2, doc
        assert doc["worker"]["crashes"] == 0 and doc["worker"]["restarts"] == 0, doc
        print("answered {}, timed out {}, shed {}, abandoned {}, late {}".format(
            len(answered), len(failed), doc["worker"]["shed"], doc["board"]["abandoned"], doc["board"]["late_results"]))
    finally:
        assert proc.stop() == 0, proc.log()[-3000:]
