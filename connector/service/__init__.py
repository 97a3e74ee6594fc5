"""The per-request service: what turns one request into one answer, and what it tells operators.

* :mod:`.inference` - :class:`SupervisedService` (the model in supervised worker processes) and
  :class:`InferenceService` (in this process); the one owner of request outcomes and latency
* :mod:`.lambda_handler` - :class:`ConnectorHandler`: the Lambda handler bound to one service
* :mod:`.health`    - the /healthz document from named sections, one owner each
* :mod:`.metrics`   - the Prometheus text exposition of health and latency
"""
