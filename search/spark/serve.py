"""The Spark search service's loop: queries from Kafka, one pass per batch, answers announced.

The consumer loop hands over whatever is waiting on the queries topic (up to a bound) as one
batch the moment the first query is there. The batch is scored in one pass over the cache
(:func:`search.spark.batch.answer_batch`); each query's rows are written to ``query_results``
by the executors; then each query is announced on the answers topic, and only then are the
batch's offsets committed. A service killed at any point is answered again from the first
uncommitted query: one whose rows are already in ``query_results`` is announced again, not
scored again, so no query's rows are written twice. A message that cannot be answered (not a
search message, another model, a vector of the wrong dimension) is announced with its error.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import SparkSession

from config.settings import KafkaSettings, SearchSettings, SparkSettings
from messaging.admin import wait_for_topics
from messaging.consumer import ConsumerLoop, LoopStats, Message
from messaging.producer import KafkaProducer
from schemas.records import ModelInfo
from search.scoring import SearchRequest
from search.spark.batch import Fresh, answer_batch
from search.spark.cache import VectorCache
from search.spark.fresh import FreshFollower, FreshSet
from search.spark.messages import AnswerNotice, SearchMessage
from search.spark.metrics import ServeMetrics
from store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Query:
    query_id: uuid.UUID
    request: SearchRequest
    sent_at: float


class QueryError(ValueError):
    """A message that cannot be answered; announced with this error."""

    def __init__(self, query_id: uuid.UUID | None, reason: str) -> None:
        super().__init__(reason)
        self.query_id = query_id


def parse_query(key: bytes | None, value: bytes | None, model: ModelInfo) -> Query:
    """The query a message asks, or QueryError saying why it cannot be answered."""
    try:
        query_id: uuid.UUID | None = uuid.UUID((key or b"").decode())
    except (ValueError, UnicodeDecodeError):
        query_id = None
    try:
        msg = SearchMessage.parse(value)
    except ValueError as exc:
        raise QueryError(query_id, str(exc)) from None
    if msg.model != model.name:
        raise QueryError(
            msg.query_id, f"model {msg.model!r} is not served here (this service serves {model.name!r})"
        )
    try:
        request = msg.request()
    except ValueError as exc:
        raise QueryError(msg.query_id, f"bad query: {exc}") from None
    if request.vector.shape != (model.dim,):
        raise QueryError(
            msg.query_id,
            f"query vector must have {model.dim} values for model {model.name}, got {request.vector.size}",
        )
    if not np.isfinite(request.vector).all():
        raise QueryError(msg.query_id, "query vector has values that are not finite")
    return Query(msg.query_id, request, msg.sent_at)


class SearchLoop:
    """Answers the batches the consumer loop hands over (its ``handler``)."""

    def __init__(
        self,
        spark: SparkSession,
        store: Store,
        model: ModelInfo,
        cache: Callable[[], VectorCache],
        fresh: Callable[[], Fresh],
        producer: KafkaProducer,
        answers_topic: str,
        metrics: ServeMetrics,
    ) -> None:
        self.spark, self.store, self.model = spark, store, model
        self._cache, self._fresh = cache, fresh
        self.producer, self.answers_topic, self.metrics = producer, answers_topic, metrics

    def __call__(self, messages: Sequence[Message]) -> None:
        notices: list[AnswerNotice] = []
        todo: dict[uuid.UUID, Query] = {}
        for m in messages:
            try:
                q = parse_query(m.key(), m.value(), self.model)
            except QueryError as exc:
                self.metrics.error()
                log.warning("query %s not answered: %s", exc.query_id or "(no id)", exc)
                if exc.query_id is not None:
                    notices.append(AnswerNotice(query_id=exc.query_id, error=str(exc)))
                continue
            todo[q.query_id] = q  # the same query twice in a batch: answered once
        queries = self._not_answered(list(todo.values()), notices)
        if queries:
            notices += self._answer(queries)
        self._announce(notices, {q.query_id: q.sent_at for q in todo.values()})

    def _not_answered(self, queries: list[Query], notices: list[AnswerNotice]) -> list[Query]:
        """Queries whose rows are in ``query_results`` already (answered before a restart, not
        committed) are announced again, not scored again."""
        left = []
        for q in queries:
            stored = self.store.read_query_results(q.query_id)
            if stored:
                log.info("query %s was answered before (%d rows): announced again", q.query_id, len(stored))
                notices.append(AnswerNotice(query_id=q.query_id, results=len(stored)))
            else:
                left.append(q)
        return left

    def _answer(self, queries: list[Query]) -> list[AnswerNotice]:
        started = time.monotonic()
        fresh = self._fresh()  # before the cache: a compaction switches the cache, then forgets
        counts = answer_batch(
            self.spark,
            self._cache(),
            fresh,
            self.store,
            [q.query_id for q in queries],
            [q.request for q in queries],
        )
        seconds = time.monotonic() - started
        self.metrics.batch(len(queries), seconds)
        log.info(
            "batch of %d queries answered in %.3fs (%d fresh rows on the driver, %d listings hidden)",
            len(queries),
            seconds,
            sum(b.rows for b in fresh.blocks),
            len(fresh.hidden),
        )
        return [AnswerNotice(query_id=q.query_id, results=n) for q, n in zip(queries, counts, strict=True)]

    def _announce(self, notices: list[AnswerNotice], sent_at: dict[uuid.UUID, float]) -> None:
        """Every notice acknowledged by the broker before the batch's offsets are committed."""
        for n in notices:
            self.producer.send(self.answers_topic, n.key(), n.value(), [])
        self.producer.flush()
        now = time.time()
        for n in notices:
            sent = sent_at.get(n.query_id, 0.0)
            if sent > 0 and n.error is None:
                self.metrics.waited(max(0.0, now - sent))


@dataclass
class Service:
    """What ``lookalike spark-serve`` runs: the cache, the driver's fresh set, the loop."""

    spark: SparkSession
    store: Store
    model: ModelInfo
    settings: SparkSettings
    search: SearchSettings
    kafka: KafkaSettings
    metrics: ServeMetrics
    cache: VectorCache | None = None
    fresh: FreshSet | None = None
    _compacting: threading.Event = field(default_factory=threading.Event)

    def load(self, generation: int = 0) -> VectorCache:
        cache = VectorCache.load(
            self.spark, self.store.url, self.model, self.settings, self.search.dtype, generation
        )
        s = cache.stats
        self.metrics.cache(s.rows, s.listings, s.partitions, s.blocks)
        log.info(
            "cached %d vectors of %d listings (model %s, %s): %d blocks, %d partitions, %.1f MB, %.1fs",
            s.rows,
            s.listings,
            self.model.name,
            self.search.dtype,
            s.blocks,
            s.partitions,
            s.bytes / 1e6,
            s.load_s,
        )
        return cache

    def run(self, stop: threading.Event) -> LoopStats:
        """Load, follow the images topic, answer queries until ``stop``."""
        client = self.kafka.client_config()
        topics = [self.kafka.queries_topic, self.kafka.answers_topic]
        if not wait_for_topics(client, topics, self.kafka.partitions, self.kafka.replication, stop):
            return LoopStats()
        since_ms = int((time.time() - self.search.follow_lookback_s) * 1000)
        self.cache = self.load()
        self.fresh = FreshSet(self.store, self.model, self.search.dtype, self.settings.serve_block_rows)
        follower = FreshFollower(
            self.fresh,
            self.kafka.search_client_config(),
            self.kafka.images_topic,
            since_ms,
            self.settings.serve_follow_interval_s,
            self.metrics,
        ).start()
        producer = KafkaProducer(client, self.kafka.max_message_bytes)
        loop = ConsumerLoop(
            client,
            self.kafka.queries_group,
            [self.kafka.queries_topic],
            SearchLoop(
                self.spark,
                self.store,
                self.model,
                self._current_cache,
                self._fresh_snapshot,
                producer,
                self.kafka.answers_topic,
                self.metrics,
            ),
            batch_size=self.settings.serve_max_batch,
            poll_timeout_s=0.2,
            coalesce=True,
            fetch_wait_ms=self.kafka.search_fetch_wait_ms,
            name="spark search service",
        )
        try:
            return loop.run(stop)
        finally:
            follower.stop()
            loop.close()
            producer.close()

    def _current_cache(self) -> VectorCache:
        assert self.cache is not None
        return self.cache

    def _fresh_snapshot(self) -> Fresh:
        """The fresh set for the next batch; past its bound, a compaction is started."""
        assert self.fresh is not None
        if self.fresh.rows > self.settings.serve_fresh_max_rows and not self._compacting.is_set():
            self._compacting.set()
            threading.Thread(target=self._compact, name="spark-serve-compaction", daemon=True).start()
        return self.fresh.snapshot()

    def _compact(self) -> None:
        """Reload the cache from the store beside the one serving, switch, let go of what the
        new one holds. Queries keep being answered meanwhile."""
        assert self.fresh is not None and self.cache is not None
        try:
            settled = self.fresh.settled()
            generation = self.cache.generation + 1
            log.info("compaction: reloading the cache (%d fresh rows on the driver)", self.fresh.rows)
            new = self.load(generation)
            old, self.cache = self.cache, new
            dropped = self.fresh.forget(settled)
            old.unpersist()
            self.metrics.reloaded()
            self.metrics.fresh(self.fresh.rows, len(self.fresh))
            log.info(
                "compaction: cache generation %d serving; %d listings left the driver", generation, dropped
            )
        except Exception:  # the old cache and the fresh set still answer correctly
            log.exception("compaction failed; the cache and the fresh set serve as they are")
        finally:
            self._compacting.clear()
