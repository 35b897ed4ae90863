"""Prometheus metrics of one Worldflow process (one registry per application instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_accepted = Counter(
            "worldflow_events_accepted", "Events durably appended to the log",
            ["workspace", "channel"], registry=r,
        )  # fmt: skip
        self.events_quarantined = Counter(
            "worldflow_events_quarantined", "Invalid events stored in the quarantine",
            ["workspace", "channel", "code"], registry=r,
        )  # fmt: skip
        self.events_duplicate = Counter(
            "worldflow_events_duplicate", "Events already in the log (same workspace, message id)",
            ["workspace", "channel"], registry=r,
        )  # fmt: skip
        self.requests_rejected = Counter(
            "worldflow_requests_rejected", "Requests answered with an error status",
            ["code"], registry=r,
        )  # fmt: skip
        self.request_latency = Histogram(
            "worldflow_http_request_duration_seconds", "HTTP request latency",
            ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.log_commit_latency = Histogram(
            "worldflow_log_commit_duration_seconds", "Time to write and commit one group",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.log_commit_events = Histogram(
            "worldflow_log_commit_events", "Events per group commit",
            buckets=(1, 10, 100, 500, 1000, 5000, 20000), registry=r,
        )  # fmt: skip
        # multiprocess_mode tells how worker processes' values combine (ignored with one worker).
        self.log_pending = Gauge(
            "worldflow_log_pending_events", "Events waiting for the log writer", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.log_end_offset = Gauge(
            "worldflow_log_end_offset", "Offset of the newest event in the log", registry=r,
            multiprocess_mode="max",
        )  # fmt: skip
        self.ws_connections = Gauge(
            "worldflow_stream_connections", "Open WebSocket stream connections", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip

    def observe_commit(self, events: int, seconds: float) -> None:
        self.log_commit_events.observe(events)
        self.log_commit_latency.observe(seconds)
