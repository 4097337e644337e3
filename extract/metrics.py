"""The worker's numbers: per-stage seconds, images, dead letters, lag, queue depths, GPU.

Kept in plain Python (read by the status line, the benchmark and tests) and mirrored into a
Prometheus registry of its own, served on a port by :meth:`ExtractMetrics.serve`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# read: waiting for Kafka; decode: per image, in the decode pool; wait: the model idle,
# waiting for decoded pixels (a stall); infer: the model; write: the store; dlq: dead letters;
# commit: offset commits.
STAGES = ("read", "decode", "wait", "infer", "write", "dlq", "commit")
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class Totals:
    """Running totals since the worker started."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    images: int = 0
    dead_letters: int = 0
    batches: int = 0
    removals: int = 0
    lag: int | None = None
    broker: str = "ok"  # or what the consumer loop waits out (a broker outage)


class ExtractMetrics:
    """Thread-safe; one per worker (its own registry, so several can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.totals = Totals()
        self._lock = threading.Lock()
        r = self.registry
        self._stage = Histogram(
            "lookalike_extract_stage_seconds",
            "Seconds per batch in each stage; decode: per image, in a decode thread",
            ["stage"],
            buckets=BUCKETS,
            registry=r,
        )
        self._images = Counter("lookalike_extract_images", "Vectors stored", registry=r)
        self._dead = Counter(
            "lookalike_extract_dead_letters", "Messages sent to the dead-letter topic", ["stage"], registry=r
        )
        self._removals = Counter(
            "lookalike_extract_removals", "Image or listing removals applied to the store", registry=r
        )
        self._batches = Counter("lookalike_extract_batches", "Batches stored and committed", registry=r)
        self.images_per_second = Gauge(
            "lookalike_extract_images_per_second", "Vectors stored per second, recent", registry=r
        )
        self.lag = Gauge(
            "lookalike_extract_consumer_lag",
            "Messages on this worker's partitions not yet stored",
            registry=r,
        )
        self.broker_up = Gauge(
            "lookalike_extract_broker_up",
            "1 while the broker answers this worker, 0 during an outage",
            registry=r,
        )
        self.broker_up.set(1)
        self._broker_errors = Counter(
            "lookalike_extract_broker_errors",
            "Transient broker failures waited out (timeouts, no coordinator, a missing topic)",
            registry=r,
        )
        self.queue_depth = Gauge(
            "lookalike_extract_queue_depth", "Batches waiting between stages", ["queue"], registry=r
        )
        self.gpu_memory = Gauge(
            "lookalike_extract_gpu_memory_bytes", "GPU memory held by torch", ["kind"], registry=r
        )
        self.gpu_utilization = Gauge(
            "lookalike_extract_gpu_utilization_percent", "GPU busy time, percent", registry=r
        )
        self._rate_mark = (time.monotonic(), 0)

    def stage(self, name: str, seconds: float) -> None:
        self._stage.labels(name).observe(seconds)
        with self._lock:
            self.totals.seconds[name] += seconds

    def stored(self, images: int, removals: int = 0) -> None:
        self._images.inc(images)
        self._removals.inc(removals)
        self._batches.inc()
        with self._lock:
            self.totals.images += images
            self.totals.removals += removals
            self.totals.batches += 1

    def dead_lettered(self, stage: str) -> None:
        self._dead.labels(stage).inc()
        with self._lock:
            self.totals.dead_letters += 1

    def consumer_lag(self, messages: int) -> None:
        self.lag.set(messages)
        self.totals.lag = messages

    def broker(self, up: bool, status: str) -> None:
        """The consumer loop's view of the broker: each transient failure, then recovery."""
        self.broker_up.set(1 if up else 0)
        if not up:
            self._broker_errors.inc()
        with self._lock:
            self.totals.broker = status

    def rate(self) -> float:
        """Images stored per second since the previous call (also sets the gauge)."""
        now = time.monotonic()
        with self._lock:
            then, before = self._rate_mark
            self._rate_mark = (now, self.totals.images)
            rate = (self.totals.images - before) / max(now - then, 1e-9)
        self.images_per_second.set(rate)
        return rate

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on host:port (Prometheus text format)."""
        try:
            start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise RuntimeError(
                f"cannot serve metrics on {host}:{port} ({exc}); set LOOKALIKE_EXTRACT_METRICS_PORT "
                "to a free port, or 0 to turn metrics off"
            ) from None
