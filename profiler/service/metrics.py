"""Prometheus metrics of the service: requests, latency and errors per route.

Each app gets its own registry (two apps in one process, as in tests, do not share or
clash), rendered in the Prometheus text format at ``/metrics``. Routes are labelled by
their template (``/users/{user_id}/tags``), never by the raw path, so a shopper id is no
label and the series stay few.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]

#: Latency buckets in seconds: a recommendation takes milliseconds, a write seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "profiler_requests",
            "HTTP requests answered",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "profiler_request_duration_seconds",
            "Time to answer a request",
            ("method", "route"),
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "profiler_request_errors",
            "Requests answered with a 4xx or 5xx status",
            ("method", "route", "status"),
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if status >= 400:
            self.errors.labels(method, route, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
