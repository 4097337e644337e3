"""A Kafka consumer loop with at-least-once delivery: offsets are committed only for batches
the sink reports stored, in order; before a partition is revoked the sink is drained and
its stored batches committed, so a rebalance hands over no half-done work.

A broker outage is waited out, never fatal: transient client errors (timeouts, lost
connections, no coordinator, a topic that does not exist yet) are logged once, counted and
retried with backoff while the loop keeps polling (which is what rejoins the group when the
broker is back). Offsets of stored batches that could not be committed are kept and committed
on a later try while the partitions stay assigned; partitions lost meanwhile are redelivered
to their next owner (writes are idempotent upserts). An observation (the lag metric) that fails
is skipped, never raised. Only a fatal error or a refusal (credentials, permissions) stops it."""

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
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec  # (not re-exported for type checkers)

from config.settings import KafkaConfig
from messaging.health import Backoff, BrokerHealth, error_of, transient

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[Message]], None]
REBALANCING = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError._STATE,
    }
)
LAG_TIMEOUT_S = 5.0  # per broker lookup of the lag: an outage fails it fast (then backoff)
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

    def broker(self, up: bool, status: str) -> None:
        """The broker as the loop sees it: each transient failure (up False), then recovery."""
        ...


class ConsumeError(RuntimeError):
    """A fatal error reported by the Kafka client, or a refusal (credentials, permissions)."""


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
        on_stored: Handler | None = None,
        name: str = "consumer",
        coalesce: bool = False,
        fetch_wait_ms: int | None = None,
    ) -> None:
        """``on_stored(messages)``: told of each batch once the sink stored it (before its
        offsets are committed); its failure is logged, never raised. ``coalesce``: a batch is
        whatever is waiting (up to ``batch_size``) once the first message is there: a lone
        message is handed on at once, not held for the poll timeout to fill a batch.
        ``fetch_wait_ms``: the consumer's ``fetch.wait.max.ms`` (None: librdkafka's)."""
        self._client_config = client_config
        self._admin: AdminClient | None = None  # made on the first lag lookup
        conf = consumer_config(client_config, group, session_timeout_ms)
        if fetch_wait_ms is not None:
            conf["fetch.wait.max.ms"] = fetch_wait_ms
        self._consumer = Consumer(conf)
        self._consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._sink = handler if isinstance(handler, BatchSink) else SyncSink(handler)
        self.batch_size = batch_size
        self._poll_timeout = poll_timeout_s
        self._observer = observer
        self._on_stored = on_stored
        self._coalesce = coalesce
        self._lag_interval = lag_interval_s
        self._lag_at = 0.0
        self._lag_retry = Backoff(1.0, 60.0)
        self._commit_retry = Backoff(0.5, 30.0)
        self._uncommitted: dict[tuple[str, int], int] = {}  # stored: the next offset to commit
        self._failed = False
        self.health = BrokerHealth(name)
        self.stats = LoopStats()

    def poll_batch(self) -> list[Message]:
        started = time.perf_counter()
        if self._coalesce:
            messages = self._consumer.consume(1, self._poll_timeout)
            if messages and self.batch_size > 1:
                messages += self._consumer.consume(self.batch_size - 1, 0)
        else:
            messages = self._consumer.consume(self.batch_size, self._poll_timeout)
        good = []
        for m in messages:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif transient(err):  # the client retries by itself; the loop keeps polling
                self._trouble(err.str())
            else:
                raise ConsumeError(f"Kafka consumer error: {err.str()}")
        if good and self._observer:  # (read from the client's queue: no proof the broker answers)
            self._observer.stage("read", time.perf_counter() - started)
        return good

    def _trouble(self, reason: str) -> None:
        self.health.trouble(reason)
        if self._observer:
            self._observer.broker(False, reason)

    def _broker_ok(self) -> None:
        """The broker answered (an assignment, a commit, a lag lookup): recovery is logged."""
        if not self.health.up:
            self.health.ok()
            self._commit_retry.reset()  # what waits to be committed goes at once
            self._lag_retry.reset()
            if self._observer:
                self._observer.broker(True, "ok")

    def run_once(self) -> int:
        """Poll and submit one batch, commit what is stored; returns the messages stored."""
        batch = self.poll_batch()
        if batch:
            self._sink.submit(batch)
        return self._commit_completed()

    def _commit_completed(self, force: bool = False) -> int:
        """Take the batches the sink stored, then commit what is stored and not committed
        (``force``: now, else when the commit backoff allows). Returns the messages stored."""
        n = self._take_completed()
        if self._uncommitted and (force or self._commit_retry.due()):
            self._commit_uncommitted()
        return n

    def _take_completed(self) -> int:
        done = self._sink.completed()
        messages = [m for b in done for m in b]
        if messages:
            self._stored(messages)
            self.stats.messages += len(messages)
            self.stats.batches += len(done)
        return len(messages)

    def _stored(self, messages: Sequence[Message]) -> None:
        for m in messages:
            key = (m.topic() or "", m.partition() or 0)
            self._uncommitted[key] = max(self._uncommitted.get(key, 0), (m.offset() or 0) + 1)
        if self._on_stored is not None:
            try:
                self._on_stored(messages)
            except Exception:  # an observation of stored work never stops the work
                log.exception("%s: the stored-batch hook failed", self.health.who)

    def _commit_uncommitted(self) -> None:
        started = time.perf_counter()
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._uncommitted.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # kept, tried again later (or forgotten if the partition goes)
            delay = self._commit_retry.failed()
            err = error_of(exc)
            if err is not None and err.code() in REBALANCING:  # no outage: the group is moving
                log.info("offset commit deferred by a rebalance (%s)", err.str())
            else:  # no coordinator, a timeout
                self._trouble(f"offset commit failed: {exc}")
            log.info("%d partition(s) stored but not committed yet; next try in %.1fs", len(offsets), delay)
        else:
            for tp in offsets:
                if self._uncommitted.get((tp.topic, tp.partition)) == tp.offset:
                    del self._uncommitted[(tp.topic, tp.partition)]
            self._commit_retry.reset()
            self._broker_ok()
        if self._observer:
            self._observer.stage("commit", time.perf_counter() - started)

    def _forget(self, partitions: list[TopicPartition], why: str) -> None:
        """Stored offsets of partitions no longer ours: their next owner redelivers them
        (the store has them: idempotent upserts)."""
        gone = [k for k in ((tp.topic, tp.partition) for tp in partitions) if k in self._uncommitted]
        for key in gone:
            del self._uncommitted[key]
        if gone:
            log.info(
                "%s: %d partition(s) %s with stored batches uncommitted: redelivered",
                self.health.who,
                len(gone),
                why,
            )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._broker_ok()  # an assignment needs the group coordinator: the broker answers

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before partitions move to another worker: finish and commit what is in flight."""
        if self._failed or not partitions:
            return
        self._sink.drain()
        self._commit_completed(force=True)
        self._forget(partitions, "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions already gone (session timed out): commits would be refused; the batches
        in flight are stored anyway (idempotent) and redelivered to their new owner."""
        log.warning(
            "lost %d partition(s) to a rebalance; their uncommitted batches are redelivered", len(partitions)
        )
        if not self._failed:
            self._sink.drain()
            self._take_completed()
        self._forget(partitions, "lost")

    def lag(self) -> int | None:
        """Messages not yet consumed on this consumer's partitions; None before assignment or
        before the first fetch response. The end of a partition is the larger of the broker's
        answer to ListOffsets and the high watermark of the last fetch response (Tansu, the
        embedded broker, answers ListOffsets with its last batch's base offset + 1). The ends
        are asked for in one request of an admin client: the consumer's own connection would
        queue each lookup behind its long-polling fetch (half a second a partition)."""
        assignment = self._consumer.assignment()
        if not assignment:
            return None
        cached = {
            (tp.topic, tp.partition): self._consumer.get_watermark_offsets(tp, cached=True)
            for tp in assignment
        }
        if any(high < 0 for _, high in cached.values()):
            return None
        total = 0
        positions = self._consumer.position(assignment)
        committed = {
            (t.topic, t.partition): t.offset
            for t in self._consumer.committed(assignment, timeout=LAG_TIMEOUT_S)
        }
        listed = self._latest(assignment)
        for tp in positions:
            key = (tp.topic, tp.partition)
            low, high = cached[key][0], max(listed.get(key, -1), cached[key][1])
            pos = tp.offset
            if pos == OFFSET_INVALID or pos < 0:
                pos = committed.get(key, OFFSET_INVALID)
            if pos == OFFSET_INVALID or pos < 0:
                pos = max(low, 0)
            total += max(0, high - pos)
        return total

    def _latest(self, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        """The broker's end offset of each partition, in one ListOffsets request."""
        if self._admin is None:
            self._admin = AdminClient(self._client_config)
        latest: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        wanted = {TopicPartition(tp.topic, tp.partition): latest for tp in partitions}
        futures = self._admin.list_offsets(wanted, request_timeout=LAG_TIMEOUT_S)
        return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}

    def observed_lag(self) -> int | None:
        """:meth:`lag`, or None when it cannot be known now: an observation never stops the
        work. A failure (the broker away: ``committed`` and watermark lookups time out) is
        logged once and counted, and the next try waits a backoff."""
        if not self._lag_retry.due():
            return None
        try:
            lag = self.lag()
        except KafkaException as exc:
            delay = self._lag_retry.failed()
            self._trouble(f"consumer lag unavailable: {exc}")
            log.debug("lag: next try in %.1fs", delay)
            return None
        except Exception:
            self._lag_retry.failed()
            log.exception("%s: consumer lag unavailable", self.health.who)
            return None
        self._lag_retry.reset()
        return lag

    def _report_lag(self) -> None:
        if self._observer is None or time.monotonic() - self._lag_at < self._lag_interval:
            return
        self._lag_at = time.monotonic()
        lag = self.observed_lag()
        if lag is not None:
            self._broker_ok()
            self._observer.consumer_lag(lag + self._sink.in_flight())

    def run(
        self,
        stop: threading.Event | None = None,
        until_drained: bool = False,
        on_progress: Callable[[int, int | None], None] | None = None,
        max_wait_s: float | None = None,
        finish: threading.Event | None = None,
    ) -> LoopStats:
        """Consume until ``stop`` is set, or (``until_drained``, or once ``finish`` is set)
        until no lag is left; then finish what is in flight and commit it.
        ``on_progress(stored, lag)``."""
        stop = stop or threading.Event()
        started = time.monotonic()
        try:
            while not stop.is_set():
                n = self.run_once()
                if on_progress:
                    on_progress(n, None)
                self._report_lag()
                draining = until_drained or (finish is not None and finish.is_set())
                if draining and self._sink.in_flight() == 0 and n == 0 and self._drained(on_progress):
                    break
                if max_wait_s is not None and time.monotonic() - started > max_wait_s:
                    raise TimeoutError(f"consumer did not drain its topics within {max_wait_s}s")
            self._sink.drain()
            n = self._commit_completed(force=True)
            if on_progress and n:
                on_progress(n, None)
            if self._uncommitted:
                log.warning(
                    "%s: stopping with %d partition(s) stored but not committed: redelivered "
                    "to the next worker (idempotent)",
                    self.health.who,
                    len(self._uncommitted),
                )
        except BaseException:
            self._failed = True
            raise
        return self.stats

    def _drained(self, on_progress: Callable[[int, int | None], None] | None) -> bool:
        """No lag left, and every stored offset committed (unknown lag: not drained)."""
        lag = self.observed_lag()
        if lag is not None and lag > 0 and on_progress:
            on_progress(0, lag)
        return lag == 0 and not self._uncommitted

    def close(self) -> None:
        self._admin = None  # no close() of its own: released here, not left reconnecting
        self._consumer.close()
