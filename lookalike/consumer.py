"""A Kafka consumer loop with at-least-once delivery: offsets are committed only after the
batch handler returned, i.e. after the store accepted the batch."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from lookalike.settings import KafkaConfig

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[Message]], None]


class ConsumeError(RuntimeError):
    """A fatal error reported by the Kafka client."""


def consumer_config(client_config: KafkaConfig, group: str) -> KafkaConfig:
    return {
        **client_config,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "max.poll.interval.ms": 600_000,
    }


@dataclass
class LoopStats:
    messages: int = 0
    batches: int = 0


class ConsumerLoop:
    """Poll batches from topics, hand each to ``handler``, then commit its offsets."""

    def __init__(
        self,
        client_config: KafkaConfig,
        group: str,
        topics: list[str],
        handler: Handler,
        batch_size: int = 32,
        poll_timeout_s: float = 0.5,
    ) -> None:
        self._consumer = Consumer(consumer_config(client_config, group))
        self._consumer.subscribe(topics)
        self._handler = handler
        self.batch_size = batch_size
        self._poll_timeout = poll_timeout_s
        self.stats = LoopStats()

    def poll_batch(self) -> list[Message]:
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
        return good

    def run_once(self) -> int:
        batch = self.poll_batch()
        if batch:
            self._handler(batch)
            self.commit(batch)
            self.stats.messages += len(batch)
            self.stats.batches += 1
        return len(batch)

    def commit(self, batch: Sequence[Message]) -> None:
        latest: dict[tuple[str, int], int] = {}
        for m in batch:
            key = (m.topic() or "", m.partition() or 0)
            latest[key] = max(latest.get(key, -1), m.offset() or 0)
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in latest.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. a rebalance took the partition: redelivered, idempotent
            log.warning("offset commit failed (%s); the batch will be redelivered", exc)

    def lag(self) -> int | None:
        """Messages not yet consumed on this consumer's partitions; None before assignment."""
        assignment = self._consumer.assignment()
        if not assignment:
            return None
        total = 0
        positions = self._consumer.position(assignment)
        committed = {
            (t.topic, t.partition): t.offset for t in self._consumer.committed(assignment, timeout=10)
        }
        for tp in positions:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            pos = tp.offset
            if pos == OFFSET_INVALID or pos < 0:
                pos = committed.get((tp.topic, tp.partition), OFFSET_INVALID)
            if pos == OFFSET_INVALID or pos < 0:
                pos = low
            total += max(0, high - pos)
        return total

    def run(
        self,
        stop: threading.Event | None = None,
        until_drained: bool = False,
        on_progress: Callable[[int, int | None], None] | None = None,
        max_wait_s: float | None = None,
    ) -> LoopStats:
        """Consume until ``stop`` is set, or (``until_drained``) until no lag is left."""
        stop = stop or threading.Event()
        started = time.monotonic()
        while not stop.is_set():
            n = self.run_once()
            if on_progress:
                on_progress(n, None)
            if until_drained and n == 0:
                lag = self.lag()
                if lag == 0:
                    break
                if on_progress:
                    on_progress(0, lag)
            if max_wait_s is not None and time.monotonic() - started > max_wait_s:
                raise TimeoutError(f"consumer did not drain its topics within {max_wait_s}s")
        return self.stats

    def close(self) -> None:
        self._consumer.close()
