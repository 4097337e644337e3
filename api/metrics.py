"""Request and search-pass metrics for Prometheus, one registry per app.

Requests are counted by a plain ASGI middleware (:class:`MetricsMiddleware`): starlette's
``BaseHTTPMiddleware`` (``app.middleware("http")``) runs each request's endpoint in a task of
its own and streams the response through a memory channel, which profiling put at a fifth of
the event loop's time per search at high rates (docs/concurrency.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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


class MetricsMiddleware:
    """Counts and times every HTTP request by method, endpoint name and status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before it responds

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # The endpoint's name: bounded, unlike the path (ids in it), and stable under prefixes.
            handler = getattr(scope.get("route"), "name", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], handler, str(status)).inc()
            self.metrics.latency.labels(scope["method"], handler).observe(time.perf_counter() - started)
