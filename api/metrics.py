"""Request and search-pass metrics for Prometheus, one registry per app."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lookalike_http_requests",
            "HTTP requests",
            ["method", "handler", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lookalike_http_request_seconds",
            "HTTP request latency",
            ["method", "handler"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )

        # the search service's passes (search.coalesce), by stage: "search" (a pass of the
        # engine) and "embed" (a forward pass of the CNN over waiting uploads)
        self.batch_size = Histogram(
            "lookalike_search_batch_size",
            "Queries done together in one pass",
            ["stage"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "lookalike_search_queue_wait_seconds",
            "Time a query waited for its pass to start",
            ["stage"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.pass_time = Histogram(
            "lookalike_search_pass_seconds",
            "Time one pass took (ranking, stock, names and the write of its answers; or the embedding)",
            ["stage"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )

    def observe_pass(self, stage: str, size: int, waits: Sequence[float], seconds: float) -> None:
        """A pass of the search service (``search.coalesce.PassObserver``)."""
        self.batch_size.labels(stage).observe(size)
        wait = self.queue_wait.labels(stage)
        for w in waits:
            wait.observe(w)
        self.pass_time.labels(stage).observe(seconds)

    async def middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        # The endpoint's name: bounded, unlike the path (ids in it), and stable under prefixes.
        handler = getattr(request.scope.get("route"), "name", None) or "unmatched"
        self.requests.labels(request.method, handler, str(response.status_code)).inc()
        self.latency.labels(request.method, handler).observe(time.perf_counter() - started)
        return response
