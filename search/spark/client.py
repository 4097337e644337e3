"""The Spark search service's client in a process that asks it (the API, ``lookalike search``).

One producer sends :class:`SearchMessage` s to ``lookalike.queries``; one reader per process
follows ``lookalike.answers`` from about the time the client started (no consumer group: every
API replica sees every notice and keeps those of its own queries) and resolves the future of
each query it sent. A query whose caller stopped waiting stays known for a while, so a later
``GET /v1/search/{query_id}`` can say it is pending, or why it failed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Literal

from config.settings import KafkaSettings
from messaging.admin import ensure_topics
from messaging.errors import BrokerUnavailable, MessagingError
from messaging.producer import KafkaProducer
from messaging.tail import TopicTail
from search.spark.messages import AnswerNotice, SearchMessage

log = logging.getLogger(__name__)
LOOKBACK_S = 60.0  # notices stamped up to this long before the start are read too (clock skew)
KEEP_S = 600.0  # a query nobody waits for any more is known as pending this long
DONE_KEPT = 4096  # notices kept for GET after their query's wait ended


@dataclass
class _Waiting:
    future: Future[AnswerNotice]
    since: float  # time.monotonic() when sent


class SparkSearchClient:
    """Send queries to the Spark search service and wait for their notices."""

    def __init__(self, kafka: KafkaSettings, *, create_topics: bool = True) -> None:
        conf = kafka.client_config()
        self.kafka = kafka
        if create_topics:  # the answers reader assigns at once instead of waiting for the topic
            try:
                ensure_topics(
                    conf, [kafka.queries_topic, kafka.answers_topic], kafka.partitions, kafka.replication, 5.0
                )
            except BrokerUnavailable as exc:
                log.warning("search topics not checked (%s): the reader waits for them", exc)
        self._producer = KafkaProducer(
            conf,
            kafka.max_message_bytes,
            ack_timeout_s=kafka.delivery_timeout_s,
            delivery_timeout_s=kafka.delivery_timeout_s,
        )
        self._tail = TopicTail(
            kafka.search_client_config(), kafka.answers_topic, int((time.time() - LOOKBACK_S) * 1000)
        )
        self._lock = threading.Lock()
        self._waiting: dict[uuid.UUID, _Waiting] = {}
        self._done: OrderedDict[uuid.UUID, AnswerNotice] = OrderedDict()
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="spark-answers", daemon=True)
        self._thread.start()

    # -- asking ---------------------------------------------------------------------------
    def send(self, message: SearchMessage) -> Future[AnswerNotice]:
        """Send one query (waits for the broker's acknowledgement: BrokerUnavailable when it
        does not come); the future resolves with its notice."""
        future: Future[AnswerNotice] = Future()
        with self._lock:
            self._waiting[message.query_id] = _Waiting(future, time.monotonic())
        try:
            self._producer.send_and_wait(self.kafka.queries_topic, message.key(), message.value(), [])
        except BaseException:
            with self._lock:
                self._waiting.pop(message.query_id, None)
            raise
        return future

    def state(self, query_id: uuid.UUID) -> Literal["pending"] | AnswerNotice | None:
        """What this client knows of a query: still pending, its notice, or nothing."""
        with self._lock:
            if query_id in self._waiting:
                return "pending"
            return self._done.get(query_id)

    @property
    def connected(self) -> bool:
        """Whether the answers reader follows its topic."""
        return self._error is None and self._tail.status.startswith("following")

    @property
    def status(self) -> str:
        return f"failed: {self._error}" if self._error else self._tail.status

    # -- the answers reader ---------------------------------------------------------------
    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                records = self._tail.read(100, 0.05)
                self._error = None
            except MessagingError as exc:  # not transient (permissions): said by readiness
                if self._error is None:
                    log.error("reading %s: %s", self.kafka.answers_topic, exc)
                self._error = str(exc)
                self._stop.wait(5.0)
                continue
            if not records and not self.connected:
                self._stop.wait(0.1)
            for _, value in records:
                self._answered(value)
            self._expire()

    def _answered(self, value: bytes) -> None:
        try:
            notice = AnswerNotice.parse(value)
        except ValueError as exc:
            log.warning("skipping a message of %s: %s", self.kafka.answers_topic, exc)
            return
        with self._lock:
            waiting = self._waiting.pop(notice.query_id, None)
            if waiting is None:
                return  # another process's query
            self._done[notice.query_id] = notice
            while len(self._done) > DONE_KEPT:
                self._done.popitem(last=False)
        if not waiting.future.done():
            waiting.future.set_result(notice)

    def _expire(self) -> None:
        old = time.monotonic() - KEEP_S
        with self._lock:
            gone = [q for q, w in self._waiting.items() if w.since < old]
            for q in gone:
                del self._waiting[q]
        if gone:
            log.warning("%d queries got no answer within %.0fs: forgotten", len(gone), KEEP_S)

    def close(self) -> None:
        """Stop reading, release the clients (closing twice is harmless)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(10.0)
        self._tail.close()
        self._producer.close()


def wait(future: Future[AnswerNotice], timeout_s: float) -> AnswerNotice | None:
    """The notice, or None past ``timeout_s``."""
    try:
        return future.result(timeout_s)
    except FutureTimeout:
        return None


async def wait_async(future: Future[AnswerNotice], timeout_s: float) -> AnswerNotice | None:
    """The notice, or None past ``timeout_s``; the query stays pending either way (a timed-out
    or cancelled wait never cancels it)."""
    wrapped = asyncio.wrap_future(future)
    done, _ = await asyncio.wait({wrapped}, timeout=timeout_s)
    return wrapped.result() if done else None
