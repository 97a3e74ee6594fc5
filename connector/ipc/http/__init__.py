"""HTTP/1.1 on ``http.server``, hardened for a host that any local program may reach: nothing here
knows Greengrass (that is :mod:`connector.ipc.routes`).

* :mod:`.guard`   - :class:`ConnectionGuard`: the connection cap, per-phase deadlines, the body budget
* :mod:`.server`  - :class:`HardenedServer`: admission before a thread exists, lingering refusals,
  no reverse DNS, requests in flight
* :mod:`.handler` - :class:`HardenedHandler`: request-line and header quirks, bounded body reading,
  refusals as JSON, draining a refused body, one write per answer
"""
