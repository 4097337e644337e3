"""Reading a topic from a point in time without a consumer group's offsets: every reader (each
API replica's index follower) sees every message. Errors are mapped to :mod:`messaging.errors`.

A topic that does not exist yet, or a broker that is away, is waited for, never given up on:
:meth:`TopicTail.read` returns nothing meanwhile and looks again with backoff (a log line
when the wait starts and when it ends); :attr:`TopicTail.status` says what it waits for. A
topic that goes away (deleted, or an embedded broker restarted empty) is waited for again and
read from its new beginning.
"""

from __future__ import annotations

import logging
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from config.settings import KafkaConfig
from messaging.errors import MessagingError
from messaging.health import Backoff, BrokerHealth, transient, transient_exception, unanswered
from schemas.messages import Headers

log = logging.getLogger(__name__)
Record = tuple[Headers, bytes]
GONE = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION})
METADATA_TIMEOUT_S = 5.0


class TopicTail:
    """Every partition of ``topic`` from ``since_ms`` (epoch milliseconds) on; never commits."""

    def __init__(
        self, client_config: KafkaConfig, topic: str, since_ms: int, retry_cap_s: float = 5.0
    ) -> None:
        self.topic, self.since_ms = topic, since_ms
        self.health = BrokerHealth(f"follower of {topic}")
        self._retry = Backoff(0.2, retry_cap_s)
        self._assigned = False
        self._waiting_for_topic = False
        self._consumer = Consumer(  # connects lazily: nothing here waits for the broker
            {
                **client_config,
                "group.id": f"lookalike-tail-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )

    @property
    def status(self) -> str:
        """``following <topic>``, or what it waits for."""
        if not self.health.up:
            return f"waiting for the broker: {self.health.status}"
        if self._waiting_for_topic:
            return f"waiting for topic {self.topic} (nothing published to it yet)"
        return f"following {self.topic}" if self._assigned else f"looking for topic {self.topic}"

    def _assign(self) -> bool:
        """Assign every partition from ``since_ms`` once the topic exists; False: not yet."""
        if not self._retry.due():
            return False
        try:
            meta = self._consumer.list_topics(self.topic, timeout=METADATA_TIMEOUT_S)
        except KafkaException as exc:
            self._failed(f"cannot read the metadata of {self.topic}: {exc}", exc)
            return False
        self.health.ok()
        found = meta.topics.get(self.topic)
        partitions = sorted(found.partitions) if found is not None and found.error is None else []
        if not partitions:
            if not self._waiting_for_topic:
                log.info("waiting for topic %s to exist (nothing published to it yet)", self.topic)
            self._waiting_for_topic = True
            self._retry.failed()
            return False
        wanted = [TopicPartition(self.topic, p, self.since_ms) for p in partitions]
        try:
            start = self._consumer.offsets_for_times(wanted, timeout=METADATA_TIMEOUT_S)
        except KafkaException as exc:
            if unanswered(exc):  # the broker is away again
                self._failed(f"cannot look up offsets of {self.topic}: {exc}", exc)
                return False
            log.warning("offsets by time unavailable (%s): following %s from its beginning", exc, self.topic)
            start = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions]
        self._consumer.assign(start)
        self._assigned, self._waiting_for_topic = True, False
        self._retry.reset()
        log.info("following topic %s (%d partitions)", self.topic, len(partitions))
        return True

    def _failed(self, reason: str, exc: KafkaException) -> None:
        if not transient_exception(exc):
            raise MessagingError(reason) from exc
        self.health.trouble(reason)
        self._retry.failed()

    def read(self, max_messages: int = 1000, timeout_s: float = 0.05) -> list[Record]:
        """The records that arrived since the last read (at most ``max_messages``); nothing
        while the topic or the broker is waited for."""
        if not self._assigned and not self._assign():
            return []
        try:
            messages = self._consumer.consume(max_messages, timeout=timeout_s)
        except KafkaException as exc:
            self._failed(f"reading {self.topic}: {exc}", exc)
            return []
        out: list[Record] = []
        for m in messages:
            err = m.error()
            if err is None:
                headers = m.headers() or []
                out.append(
                    (list(headers.items()) if isinstance(headers, dict) else headers, m.value() or b"")
                )
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.code() in GONE:
                self._lost_topic(err.str())
            elif transient(err):
                self.health.trouble(f"reading {self.topic}: {err.str()}")
            else:
                raise MessagingError(f"reading {self.topic}: {err.str()}")
        if out:
            self.health.ok()
        return out

    def _lost_topic(self, reason: str) -> None:
        if self._assigned:
            log.warning("topic %s went away (%s): waiting for it to exist again", self.topic, reason)
            self._consumer.unassign()
            self._assigned = False
            # what it holds when it comes back was published after the load: all of it
            self.since_ms = 0

    def close(self) -> None:
        self._consumer.close()
