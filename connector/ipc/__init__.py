"""Greengrass V1 local IPC (SPEC section 4): the standalone host, a client, the Lambda runtime loop.

* :mod:`.protocol`    - header names, paths, encodings and addresses shared by both ends
* :mod:`.topics`      - AWS IoT topic names and MQTT filters: the one grammar GGRouter and migrate-v1 use
* :mod:`.http`        - HTTP hardened for a host any local program may reach (no Greengrass in it)
* :mod:`.routes`      - the host's Greengrass calls and probes, who may call what, its status codes
* :mod:`.calls`       - a caller's calls without their transport (both transports run these)
* :mod:`.fast`        - the fast path: our SDK to our host, one frame each way on a Unix socket
* :mod:`.auth`        - tokens and principals: the callers' token and one token per function
* :mod:`.invocations` - what the board holds (invocations) and refuses (its errors)
* :mod:`.workboard`   - the host's queues, deadlines, bounds, admission and the served-ARN rule
* :mod:`.host`        - :class:`IPCHost`: lifecycle, limits, probes, graceful shutdown
* :mod:`.clientfile`  - the file through which local clients find a standalone host, and its safety
* :mod:`.local`       - :class:`BoardClient`, the worker side of a function in the host's process
* :mod:`.client`      - :class:`IPCClient`, for a real core or our host
* :mod:`.runtime`     - :func:`run_lambda`, the get_work -> handler -> result loop
"""
from __future__ import annotations

from .client import GetWorkResultOutput, IPCClient, IPCError, WorkItem
from .host import IPCHost
from .runtime import LambdaContext, run_lambda

__all__ = ["GetWorkResultOutput", "IPCClient", "IPCError", "IPCHost", "LambdaContext", "WorkItem",
           "run_lambda"]
