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
        self.push_connections = Gauge(
            "worldflow_push_connections", "Open world push channel connections", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.push_actions = Counter(
            "worldflow_push_actions", "In-world actions sent, acknowledged, parked or expired",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            "worldflow_decisions", "Decisions answered, by strategy (fallback_error: the store "
            "was slow or failing)", ["strategy"], registry=r,
        )  # fmt: skip
        self.push_latency = Histogram(
            "worldflow_push_latency_seconds", "From an in-world action's decision to its send",
            registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
        )  # fmt: skip

        # Read from the processor's committed state at each scrape (it runs in its own process).
        self.processor_offset = Gauge(
            "worldflow_processor_offset", "Log offset the processor has applied and committed",
            ["partition"], registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.processor_counts = Gauge(
            "worldflow_processor_events", "What the processor counted (events, merges, …)",
            ["partition", "counter"], registry=r, multiprocess_mode="max",
        )  # fmt: skip

        # The delivery dispatcher's (actions/deliver.py), in its own process.
        self.deliveries_delivered = Counter(
            "worldflow_deliveries_delivered", "Deliveries a destination accepted (2xx)",
            ["channel"], registry=r,
        )  # fmt: skip
        self.delivery_attempts_failed = Counter(
            "worldflow_delivery_attempts_failed", "Attempts that failed and will be retried",
            ["channel", "reason"], registry=r,
        )  # fmt: skip
        self.deliveries_dead = Counter(
            "worldflow_deliveries_dead", "Deliveries given up (permanent error, window ended)",
            ["channel"], registry=r,
        )  # fmt: skip
        self.delivery_latency = Histogram(
            "worldflow_delivery_duration_seconds", "Time from request to answer (or failure)",
            ["channel"], buckets=(*LATENCY_BUCKETS, 10.0, 30.0, 60.0), registry=r,
        )  # fmt: skip
        self.circuit_changes = Counter(
            "worldflow_destination_circuit_changes", "Destination circuit state changes",
            ["state"], registry=r,
        )  # fmt: skip

    def observe_commit(self, events: int, seconds: float) -> None:
        self.log_commit_events.observe(events)
        self.log_commit_latency.observe(seconds)


def latency_quantiles(
    metrics_text: str,
    route: str,
    quantiles: tuple[float, ...] = (0.5, 0.99),
    since: str | None = None,
) -> list[float]:
    """Quantiles in ms of one route's 200 answers, from the exposition text of the request
    latency histogram (interpolated linearly within buckets, as Prometheus does); with
    ``since`` (an earlier text), of the answers between the two."""

    def counts(text: str) -> dict[float, float]:
        found: dict[float, float] = {}
        for line in text.splitlines():
            if line.startswith("worldflow_http_request_duration_seconds_bucket") and (
                f'route="{route}"' in line and 'status="200"' in line
            ):
                le = line.split('le="')[1].split('"')[0]
                found[float(le)] = float(line.rsplit(" ", 1)[1])
        return found

    before = counts(since) if since is not None else {}
    buckets = sorted((le, n - before.get(le, 0.0)) for le, n in counts(metrics_text).items())
    total = buckets[-1][1] if buckets else 0.0

    def quantile(q: float) -> float:
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in buckets:
            if count >= q * total:
                if bound == float("inf"):
                    return lower_bound * 1000
                share = (q * total - lower_count) / max(count - lower_count, 1)
                return (lower_bound + share * (bound - lower_bound)) * 1000
            lower_bound, lower_count = bound, count
        return float("nan")

    return [quantile(q) for q in quantiles]
