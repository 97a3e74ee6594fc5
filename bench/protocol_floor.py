#!/usr/bin/env python3
"""The Greengrass IPC protocol alone: the host of `serve` with a handler that answers at once.

bench/perf.py calls it through the bundled SDK, as it calls the service, both ways the host
offers: the fast path (one frame each way on its Unix socket) and the V1 exchange (a POST, the
202, a GET that waits for the result, the handler's answer relayed back, over keep-alive loopback
connections). Whatever the service adds beyond this and the worker hop is ours to cut; the V1
part is the price of the protocol that SPEC section 4 fixes (and the original SDK's callers speak).

    protocol_floor.py CLIENT_FILE SERVICE_NAME ANSWER_FILE   (prints "ready" once it serves; ends
    when its stdin closes)
"""
from __future__ import annotations

import secrets
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connector.ipc.host import IPCHost  # noqa: E402
from connector.ipc.runtime import run_lambda  # noqa: E402
from connector.ipc.protocol import inference_function_arn  # noqa: E402
from connector.standalone.serve import ALGO_TYPE  # noqa: E402


def main() -> int:
    client_file, service_name, answer_file = sys.argv[1:4]
    # What connector.lambda_function returns, with the service's own text, so the sizes match.
    answer = {"Body": Path(answer_file).read_text(encoding="utf-8"), "ContentType": "application/json"}
    host = IPCHost(host="127.0.0.1", port=0, token=secrets.token_urlsafe(32), result_timeout_s=30.0,
                   name=service_name, client_file=client_file).start()
    arn = inference_function_arn(host.region, ALGO_TYPE, service_name)
    host.register_function(arn, timeout_s=30.0)
    threading.Thread(target=run_lambda, args=(arn, lambda event, context: answer, host.function_client(arn)),
                     kwargs={"concurrency": 2}, daemon=True).start()
    host.set_ready()
    print("ready", flush=True)
    sys.stdin.read()  # until perf.py closes our stdin
    host.shutdown(grace_s=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
