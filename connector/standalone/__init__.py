"""Running without Greengrass: the standalone host and what runs beside it, and attaching.

* :mod:`.serve`      - ``serve`` (IPC host and connector in one process) and ``host`` (the host alone)
* :mod:`.attach`     - ``attach`` / ``feedback``: the connector / feedback service polling a core or host
* :mod:`.companions` - what a standalone host runs beside the connector: GGRouter, feedback, feeder
* :mod:`.ggrouter`   - the host's GGRouter: MQTT publishes judged like a core's subscriptions
* :mod:`.lifecycle`  - SIGTERM/SIGINT stop, SIGHUP reload
* :mod:`.heap`       - keep the long-running process's heap from holding what a burst allocated
"""
