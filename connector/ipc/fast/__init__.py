"""The fast path: our SDK to our host in one frame each way on a private Unix socket (issue 20).

The V1 exchange (:mod:`connector.ipc.routes`) stays, unchanged, for every client that speaks it;
the host advertises this beside it in its client-file entry (``"fast": {"unix": <path>,
"protocol": 1}``) and the bundled SDK uses it when offered. It has one operation, invoke
(post_work RequestResponse + get_work_result for one principal), served by the same code as the
V1 exchange's calls (:mod:`connector.ipc.calls`) under the same guard, bounds and shutdown.

* :mod:`.frames`     - the request and answer frames (the SDK keeps a copy)
* :mod:`.socketfile` - the socket beside the client file: private, replaced safely, removed
* :mod:`.server`     - :class:`FastServer`: admission, deadlines, budgets, one frame per call
"""
