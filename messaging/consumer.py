"""A Kafka consumer loop with at-least-once delivery: offsets are committed only for batches
the sink reports stored, in order; before a partition is revoked the sink is drained and
its stored batches committed, so a rebalance hands over no half-done work."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from config.settings import KafkaConfig

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[Message]], None]
__all__ = ["BatchSink", "ConsumerLoop", "Handler", "LoopStats", "Message", "SyncSink"]


@runtime_checkable
class BatchSink(Protocol):
    """Where consumed batches go. ``submit`` may block (backpressure); ``completed`` returns
    the batches stored since the last call, in submission order; ``drain`` waits for all."""

    def submit(self, batch: Sequence[Message]) -> None: ...

    def completed(self) -> list[Sequence[Message]]: ...

    def drain(self) -> None: ...

    def in_flight(self) -> int: ...


class SyncSink:
    """A plain handler as a sink: each batch is done when the handler returns."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._done: list[Sequence[Message]] = []

    def submit(self, batch: Sequence[Message]) -> None:
        self._handler(batch)
        self._done.append(batch)

    def completed(self) -> list[Sequence[Message]]:
        done, self._done = self._done, []
        return done

    def drain(self) -> None:
        return None

    def in_flight(self) -> int:
        return 0


class LoopObserver(Protocol):
    def stage(self, name: str, seconds: float) -> None: ...

    def consumer_lag(self, messages: int) -> None: ...


class ConsumeError(RuntimeError):
    """A fatal error reported by the Kafka client."""


def consumer_config(client_config: KafkaConfig, group: str, session_timeout_ms: int = 10_000) -> KafkaConfig:
    return {
        **client_config,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(100, min(1_000, session_timeout_ms // 3)),
        "max.poll.interval.ms": 600_000,
    }


@dataclass
class LoopStats:
    messages: int = 0  # committed (stored) messages
    batches: int = 0


class ConsumerLoop:
    """Poll batches from topics, hand each to the sink, commit the offsets of stored ones."""

    def __init__(
        self,
        client_config: KafkaConfig,
        group: str,
        topics: list[str],
        handler: Handler | BatchSink,
        batch_size: int = 32,
        poll_timeout_s: float = 0.5,
        *,
        session_timeout_ms: int = 10_000,
        observer: LoopObserver | None = None,
        lag_interval_s: float = 5.0,
    ) -> None:
        self._consumer = Consumer(consumer_config(client_config, group, session_timeout_ms))
        self._consumer.subscribe(topics, on_revoke=self._on_revoke, on_lost=self._on_lost)
        self._sink = handler if isinstance(handler, BatchSink) else SyncSink(handler)
        self.batch_size = batch_size
        self._poll_timeout = poll_timeout_s
        self._observer = observer
        self._lag_interval = lag_interval_s
        self._lag_at = 0.0
        self._failed = False
        self.stats = LoopStats()

    def poll_batch(self) -> list[Message]:
        started = time.perf_counter()
        messages = self._consumer.consume(self.batch_size, self._poll_timeout)
        good = []
        for m in messages:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal() or not err.retriable():
                raise ConsumeError(f"Kafka consumer error: {err.str()}")
            else:
                log.warning("Kafka consumer: %s (retrying)", err.str())
        if good and self._observer:
            self._observer.stage("read", time.perf_counter() - started)
        return good

    def run_once(self) -> int:
        """Poll and submit one batch, commit what is stored; returns the messages committed."""
        batch = self.poll_batch()
        if batch:
            self._sink.submit(batch)
        return self._commit_completed()

    def _commit_completed(self) -> int:
        done = self._sink.completed()
        messages = [m for b in done for m in b]
        if messages:
            self.commit(messages)
            self.stats.messages += len(messages)
            self.stats.batches += len(done)
        return len(messages)

    def commit(self, batch: Sequence[Message]) -> None:
        started = time.perf_counter()
        latest: dict[tuple[str, int], int] = {}
        for m in batch:
            key = (m.topic() or "", m.partition() or 0)
            latest[key] = max(latest.get(key, -1), m.offset() or 0)
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in latest.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. a rebalance took the partition: redelivered, idempotent
            log.warning("offset commit failed (%s); the batch will be redelivered", exc)
        if self._observer:
            self._observer.stage("commit", time.perf_counter() - started)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before partitions move to another worker: finish and commit what is in flight."""
        if self._failed or not partitions:
            return
        self._sink.drain()
        self._commit_completed()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions already gone (session timed out): commits would be refused; the batches
        in flight are stored anyway (idempotent) and redelivered to their new owner."""
        log.warning(
            "lost %d partition(s) to a rebalance; their uncommitted batches are redelivered", len(partitions)
        )
        if not self._failed:
            self._sink.drain()
            self._sink.completed()

    def lag(self) -> int | None:
        """Messages not yet consumed on this consumer's partitions; None before assignment or
        before the first fetch response. The end of a partition is the larger of the broker's
        answer to ListOffsets and the high watermark of the last fetch response (Tansu, the
        embedded broker, answers ListOffsets with its last batch's base offset + 1)."""
        assignment = self._consumer.assignment()
        if not assignment:
            return None
        fetched = {
            (tp.topic, tp.partition): self._consumer.get_watermark_offsets(tp, cached=True)[1]
            for tp in assignment
        }
        if any(high < 0 for high in fetched.values()):
            return None
        total = 0
        positions = self._consumer.position(assignment)
        committed = {
            (t.topic, t.partition): t.offset for t in self._consumer.committed(assignment, timeout=10)
        }
        for tp in positions:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            high = max(high, fetched[(tp.topic, tp.partition)])
            pos = tp.offset
            if pos == OFFSET_INVALID or pos < 0:
                pos = committed.get((tp.topic, tp.partition), OFFSET_INVALID)
            if pos == OFFSET_INVALID or pos < 0:
                pos = low
            total += max(0, high - pos)
        return total

    def _report_lag(self) -> None:
        if self._observer is None or time.monotonic() - self._lag_at < self._lag_interval:
            return
        self._lag_at = time.monotonic()
        lag = self.lag()
        if lag is not None:
            self._observer.consumer_lag(lag + self._sink.in_flight())

    def run(
        self,
        stop: threading.Event | None = None,
        until_drained: bool = False,
        on_progress: Callable[[int, int | None], None] | None = None,
        max_wait_s: float | None = None,
    ) -> LoopStats:
        """Consume until ``stop`` is set, or (``until_drained``) until no lag is left; then
        finish what is in flight and commit it. ``on_progress(committed, lag)``."""
        stop = stop or threading.Event()
        started = time.monotonic()
        try:
            while not stop.is_set():
                n = self.run_once()
                if on_progress:
                    on_progress(n, None)
                self._report_lag()
                if until_drained and self._sink.in_flight() == 0 and n == 0 and self._drained(on_progress):
                    break
                if max_wait_s is not None and time.monotonic() - started > max_wait_s:
                    raise TimeoutError(f"consumer did not drain its topics within {max_wait_s}s")
            self._sink.drain()
            n = self._commit_completed()
            if on_progress and n:
                on_progress(n, None)
        except BaseException:
            self._failed = True
            raise
        return self.stats

    def _drained(self, on_progress: Callable[[int, int | None], None] | None) -> bool:
        lag = self.lag()
        if lag is not None and lag > 0 and on_progress:
            on_progress(0, lag)
        return lag == 0

    def close(self) -> None:
        self._consumer.close()
