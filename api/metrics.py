"""Request metrics for Prometheus, one registry per app."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

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
