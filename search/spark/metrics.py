"""The Spark search service's numbers, in plain Python (log lines, tests) and in a Prometheus
registry of its own, served on a port by :meth:`ServeMetrics.serve`."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass
class ServeTotals:
    vectors: int = 0
    listings: int = 0
    partitions: int = 0
    blocks: int = 0
    fresh_rows: int = 0
    hidden_listings: int = 0
    batches: int = 0
    queries: int = 0
    errors: int = 0
    last_batch: int = 0
    last_pass_s: float = 0.0
    reloads: int = 0


class ServeMetrics:
    """Thread-safe; one per service."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.totals = ServeTotals()
        self._lock = threading.Lock()
        self._vectors = Gauge("lookalike_spark_serve_vectors", "Vectors cached by the executors", registry=r)
        self._listings = Gauge(
            "lookalike_spark_serve_listings", "Listings cached by the executors", registry=r
        )
        self._partitions = Gauge("lookalike_spark_serve_partitions", "Partitions of the cache", registry=r)
        self._blocks = Gauge("lookalike_spark_serve_blocks", "Blocks (matrices) of the cache", registry=r)
        self._fresh = Gauge(
            "lookalike_spark_serve_fresh_rows", "Vectors of changed listings scored on the driver", registry=r
        )
        self._hidden = Gauge(
            "lookalike_spark_serve_hidden_listings",
            "Cached listings overridden or removed since the load",
            registry=r,
        )
        self._batches = Counter("lookalike_spark_serve_batches", "Batches scored (one pass each)", registry=r)
        self._queries = Counter("lookalike_spark_serve_queries", "Queries answered", ["outcome"], registry=r)
        self._reloads = Counter("lookalike_spark_serve_reloads", "Cache reloads (compactions)", registry=r)
        self._batch_size = Histogram(
            "lookalike_spark_serve_batch_size",
            "Queries scored together in one pass",
            buckets=SIZES,
            registry=r,
        )
        self._pass = Histogram(
            "lookalike_spark_serve_pass_seconds",
            "Seconds of a batch: the pass over the cache, the merge and the writes",
            buckets=SECONDS,
            registry=r,
        )
        self._wait = Histogram(
            "lookalike_spark_serve_queue_wait_seconds",
            "Seconds from a query's sending (its sent_at) to its answer notice",
            buckets=SECONDS,
            registry=r,
        )

    def serve(self, port: int, host: str) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def cache(self, vectors: int, listings: int, partitions: int, blocks: int) -> None:
        with self._lock:
            t = self.totals
            t.vectors, t.listings, t.partitions, t.blocks = vectors, listings, partitions, blocks
        self._vectors.set(vectors)
        self._listings.set(listings)
        self._partitions.set(partitions)
        self._blocks.set(blocks)

    def fresh(self, rows: int, hidden: int) -> None:
        with self._lock:
            self.totals.fresh_rows, self.totals.hidden_listings = rows, hidden
        self._fresh.set(rows)
        self._hidden.set(hidden)

    def batch(self, size: int, seconds: float) -> None:
        with self._lock:
            t = self.totals
            t.batches, t.queries, t.last_batch, t.last_pass_s = t.batches + 1, t.queries + size, size, seconds
        self._batches.inc()
        self._queries.labels("answered").inc(size)
        self._batch_size.observe(size)
        self._pass.observe(seconds)

    def error(self) -> None:
        with self._lock:
            self.totals.errors += 1
        self._queries.labels("error").inc()

    def waited(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def reloaded(self) -> None:
        with self._lock:
            self.totals.reloads += 1
        self._reloads.inc()
