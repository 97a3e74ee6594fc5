"""Inference worker processes and their supervision (after gunicorn's arbiter and dirty/ pool).

* :mod:`.child`      - the worker's own program: load the model once, answer requests until told off
* :mod:`.messages`   - what supervisor and worker say to each other, as named types
* :mod:`.process`    - :class:`WorkerProcess`: one started child and the socket to it
* :mod:`.supervisor` - :class:`WorkerSupervisor`: one worker's requests, deadlines, memory, respawn
* :mod:`.arbiter`    - the supervisor's thread: replacing dead workers, running reloads
* :mod:`.reloader`   - when to load the model again: the model directory's fingerprint and watch
* :mod:`.pool`       - :class:`WorkerPool`: several supervisors offered as one
* :mod:`.sizing`     - how many workers (CONNECTOR_INFERENCE_WORKERS or auto) and their threads
* :mod:`.memory`     - resident memory, MemAvailable and the memory cgroup's room
"""
