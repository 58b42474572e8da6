"""Prometheus metrics of the service: requests, latency and errors per route.

Each app gets its own registry (two apps in one process, as in tests, do not share or
clash), rendered in the Prometheus text format at ``/metrics``. Routes are labelled by
their template (``/users/{user_id}/tags``), never by the raw path, so a shopper id is no
label and the series stay few.

When several processes serve one workspace (``profiler serve --workers N``) a scrape
reaches one of them, so each counts into prometheus_client's multiprocess files (the
folder in ``PROMETHEUS_MULTIPROC_DIR``, which ``profiler serve`` sets before its workers
start) and ``/metrics`` renders the sum over all of them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]

#: Latency buckets in seconds: a recommendation takes milliseconds, a write seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """Requests, latency and errors; ``multiprocess``: summed over the server's processes."""

    def __init__(self, *, multiprocess: bool = False) -> None:
        self.registry = CollectorRegistry()
        self._shared = None
        if multiprocess:
            folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            if not folder or values.ValueClass is values.MutexValue:
                raise RuntimeError(
                    "metrics of several processes need PROMETHEUS_MULTIPROC_DIR set before "
                    "prometheus_client is imported (profiler serve --workers sets it)"
                )
            self._shared = folder
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
        if self._shared is None:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=self._shared)
        return generate_latest(combined)
