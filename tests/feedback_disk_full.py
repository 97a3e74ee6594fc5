"""A feedback service whose local directory finds the disk full, then gets room again; run in its
own process by tests/feedback/test_hardening.py (a file-size limit or a mount must not touch the
test process). Prints one JSON line: the counters while the disk is full and after.

``fsize DIR``: RLIMIT_FSIZE (SIGXFSZ ignored), so writes past 16 KiB fail with EFBIG, which the
service treats as ENOSPC. It works for any user.
``tmpfs DIR``: a real ENOSPC: the local directory is a 256 KiB tmpfs, mounted in a private mount
namespace (``unshare -m``), filled up by a filler file that is removed later. It needs root (a
user namespace would show the parents of the spool as owned by nobody, which the spool refuses);
exit status 77 says it cannot run here.
"""
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from connector.feedback import config as fc
from connector.feedback.publisher import RouterPublisher
from connector.feedback.collector import FeedbackService, SpoolFullError
from connector.ipc import IPCHost, run_lambda
from connector.ipc.protocol import GGROUTER_ARN as ROUTER_ARN

SKIP = 77
BIG = b"\x89PNG\r\n\x1a\n" + os.urandom(64 * 1024)
DOC = {"prediction": [[1, 0.9, 0.1, 0.1, 0.2, 0.2]]}


def wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("condition not met in {} s".format(timeout))
        time.sleep(0.02)


def snapshot(svc, published, samples):
    files = sorted(str(p.relative_to(samples)) for p in samples.rglob("*")
                   if p.is_file() and p.name != "filler")
    return dict(svc.describe(), samples=files, spooled=len(svc.spool),
                statuses=[d["response"]["status"] for t, d in published
                          if t == "feedback/message/status" and d["id"] == "big"])


def run(how, tmp):
    samples = tmp / "samples"
    values = {"FeedbackConfigurationMap": {"l1": {"local-directory": str(samples), "content-type": "image/png",
                                                  "s3-prefix": "cam", "file-ext": "png"}},
              "FeedbackSpoolDirectory": str(tmp / "spool"), "FeedbackRetryMinSeconds": "0.02",
              "FeedbackRetryMaxSeconds": "0.05"}
    host = IPCHost(port=0, write_client_file=False).start()
    published = []
    host.register_function(ROUTER_ARN)
    stop = threading.Event()
    threading.Thread(target=run_lambda, args=(ROUTER_ARN, lambda e, c: published.append(
        (c.client_context.custom["subject"], json.loads(e))), host.client(function_arn=ROUTER_ARN)),
        kwargs={"stop_event": stop}, daemon=True).start()
    svc = FeedbackService(fc.parse_parameters(values, environ={}),
                          RouterPublisher(host.client(timeout=5), "disk-full"))
    svc.accept(BIG, {"ConfigId": "l1", "ModelPrediction": DOC}, "big")  # spooled while there is room
    result = {}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if how == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))
    svc.start()
    wait(lambda: svc.counters["disk_errors"] >= 1 and svc.counters["retries"] >= 3)
    result["during"] = snapshot(svc, published, samples)
    if how == "fsize":
        before = svc.counters["disk_errors"]
        try:
            svc.accept(BIG, {"ConfigId": "l1", "ModelPrediction": DOC}, "refused")
        except SpoolFullError as exc:
            result["accept_refused"] = str(exc)
        result["accept_disk_errors"] = svc.counters["disk_errors"] - before
        result["spool_files_after_refusal"] = len([n for n in os.listdir(str(tmp / "spool"))
                                                   if "-big." not in n])
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    else:
        (samples / "filler").unlink()
    # The status reaches the router's handler on its own thread: both are awaited.
    wait(lambda: svc.counters["delivered"] >= 1 and snapshot(svc, published, samples)["statuses"])
    result["after"] = snapshot(svc, published, samples)
    svc.close()
    stop.set()
    host.shutdown(0)
    print(json.dumps(result))


def tmpfs(tmp):
    """Re-run this script as `tmpfs-inside` in a private mount namespace with the tmpfs mounted."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        print("a tmpfs needs root, unshare and mount here")
        return SKIP
    if subprocess.run(["unshare", "-m", "true"], stderr=subprocess.DEVNULL).returncode != 0:
        print("unshare -m (a private mount namespace) is not allowed here")
        return SKIP
    samples = tmp / "samples"
    samples.mkdir(mode=0o700)
    script = ('mount -t tmpfs -o size=256k,mode=0700 tmpfs "$1" || exit {skip}; '
              'exec "$2" "$3" tmpfs-inside "$4"').format(skip=SKIP)
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                          str(samples), sys.executable, __file__, str(tmp)])
    if out.returncode == SKIP:
        print("mounting a tmpfs is not allowed here")
    return out.returncode


def main():
    how, tmp = sys.argv[1], Path(sys.argv[2])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if how == "tmpfs":
        return tmpfs(tmp)
    if how == "tmpfs-inside":
        with open(str(tmp / "samples" / "filler"), "wb") as handle:  # leave less room than one sample
            handle.write(b"\0" * (200 * 1024))
        how = "tmpfs"
    run(how, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
