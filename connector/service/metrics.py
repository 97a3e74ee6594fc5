"""Operator metrics in the Prometheus text exposition format (version 0.0.4), written by hand.

Why not prometheus-client: it would be one more package on every device and in every Lambda
package (also Python 3.7 ones), its default registry is process-global (tests and several
services in one process would share it), and what we expose is a handful of counters, gauges and
four histograms whose text format is a few lines of code.

Request latency is split where the time goes: `queue` (from the service taking the request to the
worker starting on it: waiting behind other requests or for a restarted worker), `decode` and
`inference` (measured in the worker: image decoding, then preprocessing + the runtime + post-
processing) and `total` (the service's whole handling of the request).
"""
from __future__ import annotations

import bisect
import threading
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

# Seconds: from a fast x86 inference (a few ms) to an emulated or Raspberry Pi one (seconds).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PHASES = ("queue", "decode", "inference", "total")
# Request outcomes, as the service finished each request: answered, refused (the request itself
# was bad: not an image, too many pixels), timeout (not answered in
# LocalInferenceServiceTimeoutSeconds), abandoned (the caller left before a worker took it), failed
# (the worker crashed, went over its memory limit, or the runtime failed).
OUTCOMES = ("ok", "refused", "timeout", "abandoned", "failed")


class Histogram:
    def __init__(self, buckets: Iterable[float] = BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> List[Tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip(list(self.buckets) + [float("inf")], self.counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class RequestMetrics:
    """Counts and latency histograms of one service; safe to update from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes: Dict[str, int] = {o: 0 for o in OUTCOMES}
        self.latency: Dict[str, Histogram] = {p: Histogram() for p in PHASES}

    def observe(self, outcome: str, total_s: float, phases: Optional[Mapping[str, float]] = None) -> None:
        with self._lock:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            self.latency["total"].observe(total_s)
            for phase, seconds in (phases or {}).items():
                if phase in self.latency and seconds is not None:
                    self.latency[phase].observe(max(0.0, float(seconds)))

    def snapshot(self) -> "Tuple[Dict[str, int], Dict[str, Histogram]]":
        with self._lock:
            copy = {}
            for phase, h in self.latency.items():
                c = Histogram(h.buckets)
                c.counts, c.sum, c.count = list(h.counts), h.sum, h.count
                copy[phase] = c
            return dict(self.outcomes), copy


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


# Health-document counters exposed as Prometheus counters: (section, key, metric name, help).
COUNTERS = (
    ("worker", "restarts", "worker_restarts_total",
     "Inference worker processes started to replace one that failed or hung."),
    ("worker", "crashes", "worker_crashes_total", "Inference workers that died while handling a request."),
    ("worker", "hangs", "worker_hangs_total", "Inference workers stopped for taking longer than the timeout."),
    ("board", "timeouts", "timeouts_total",
     "Requests the host answered with a timeout: not answered within LocalInferenceServiceTimeoutSeconds."),
    ("worker", "memory_limit_exceeded", "worker_memory_kills_total",
     "Inference workers stopped for using more than LocalInferenceServiceMemoryLimitKB."),
    ("worker", "reloads", "model_reloads_total",
     "Workers switched to a new model version while serving (one per worker and version)."),
    ("worker", "reload_failures", "model_reload_failures_total",
     "Model versions that failed to load (the old one kept serving)."),
    ("worker", "shed", "requests_shed_total",
     "Requests never sent to a worker because they could not finish before their deadline."),
    ("board", "abandoned", "requests_abandoned_total",
     "Requests whose caller stopped waiting before the answer."),
    ("board", "busy", "requests_busy_total", "Requests refused because the function's queue was full."),
    ("board", "late_results", "late_results_total", "Answers that came after their caller's deadline (dropped)."),
    # The ML Feedback service's, when it runs here.
    ("feedback", "quarantined", "feedback_quarantined_total",
     "Spooled feedback records that failed their checks and were moved to the spool's quarantine/."),
    ("feedback", "delivery_restarts", "feedback_delivery_restarts_total",
     "Times the feedback delivery loop failed and was restarted."),
    ("feedback", "full", "feedback_local_directory_full_total",
     "Feedback samples failed as LocalDirectoryFull (local-directory-max-bytes used up)."),
    ("feedback", "disk_errors", "feedback_disk_errors_total",
     "Feedback writes that found the disk full (ENOSPC, EDQUOT, EFBIG); the sample stayed in the spool."),
)


def _section(health: Mapping[str, Any], name: str) -> Optional[Mapping[str, Any]]:
    section = health.get(name)
    return section if isinstance(section, Mapping) else None


def render(service: str, metrics: RequestMetrics, health: Mapping[str, Any],
           resident_bytes: Optional[Mapping[str, Optional[int]]] = None) -> str:
    """The exposition text for one service. `health` is the detailed /healthz document (its
    sections: see connector.service.health); `resident_bytes` maps a process role to its RSS."""
    label = 'service="{}"'.format(_escape(service))
    lines: List[str] = []

    def metric(name: str, kind: str, help_text: str, samples: Iterable[Tuple[str, Any]]) -> None:
        full = "ggml_" + name
        lines.append("# HELP {} {}".format(full, help_text))
        lines.append("# TYPE {} {}".format(full, kind))
        for extra, value in samples:
            lines.append("{}{{{}}} {}".format(full, ",".join(l for l in (label, extra) if l), _number(value)))

    outcomes, latency = metrics.snapshot()
    metric("requests_total", "counter", "Inference requests by outcome.",
           [('outcome="{}"'.format(o), n) for o, n in sorted(outcomes.items())])
    lines.append("# HELP ggml_request_seconds Request latency by phase (queue, decode, inference, total).")
    lines.append("# TYPE ggml_request_seconds histogram")
    for phase in PHASES:
        h = latency[phase]
        base = '{},phase="{}"'.format(label, phase)
        for le, n in h.cumulative():
            lines.append('ggml_request_seconds_bucket{{{},le="{}"}} {}'.format(base, le, n))
        lines.append("ggml_request_seconds_sum{{{}}} {}".format(base, repr(h.sum)))
        lines.append("ggml_request_seconds_count{{{}}} {}".format(base, h.count))
    for section_name, key, name, help_text in COUNTERS:
        section = _section(health, section_name)
        if section is not None or section_name != "feedback":
            metric(name, "counter", help_text, [("", (section or {}).get(key, 0) or 0)])
    worker = _section(health, "worker") or {}
    metric("worker_ready", "gauge", "1 while the inference worker is ready to serve.",
           [("", 1 if worker.get("state") == "ready" else 0)])
    board = _section(health, "board")
    if board is not None and "queue_depth" in board:
        metric("queue_depth", "gauge", "Requests waiting for the service (queued, not yet taken).",
               [("", board["queue_depth"])])
    if resident_bytes:
        metric("resident_memory_bytes", "gauge", "Resident memory of the service's processes.",
               [('process="{}"'.format(role), rss) for role, rss in sorted(resident_bytes.items()) if rss is not None])
    return "\n".join(lines) + "\n"
