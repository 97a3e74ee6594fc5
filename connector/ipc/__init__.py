"""Greengrass V1 local IPC: the standalone host, a client, and the Lambda runtime loop.

* :mod:`.protocol`  - header names, paths, encodings shared by both ends
* :mod:`.workboard` - the host's queues, invocations, deadlines, bounds and the served-ARN rule
* :mod:`.connections` - the host's connection cap, head/body deadlines and body budget
* :mod:`.handler`   - the host's HTTP request handling, who may call what, and its status codes
* :mod:`.host`      - :class:`IPCHost`: lifecycle, per-function tokens, probes, graceful shutdown
* :mod:`.clientfile`- the file through which local clients find a standalone host, and its safety
* :mod:`.local`     - :class:`BoardClient`, the worker side of a function in the host's process
* :mod:`.client`    - :class:`IPCClient`, for a real core or our host
* :mod:`.runtime`   - :func:`run_lambda`, the get_work -> handler -> result loop

Environment variables read here: ``AWS_CONTAINER_AUTHORIZATION_TOKEN``, ``GG_DAEMON_PORT``,
``AWS_REGION`` (as inside a Greengrass Lambda) and ``GG_ML_IPC_FILE`` (client file location).
"""
from __future__ import annotations

from .client import GetWorkResultOutput, IPCClient, IPCError, WorkItem
from .host import IPCHost
from .runtime import LambdaContext, run_lambda

__all__ = ["GetWorkResultOutput", "IPCClient", "IPCError", "IPCHost", "LambdaContext", "WorkItem",
           "run_lambda"]
