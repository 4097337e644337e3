"""Reading a topic from a point in time without a consumer group's offsets: every reader (each
API replica's index follower) sees every message. Errors are mapped to :mod:`messaging.errors`."""

from __future__ import annotations

import logging
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from config.settings import KafkaConfig
from messaging.errors import BrokerUnavailable, MessagingError
from schemas.messages import Headers

log = logging.getLogger(__name__)
Record = tuple[Headers, bytes]


class TopicTail:
    """Every partition of ``topic`` from ``since_ms`` (epoch milliseconds) on; never commits."""

    def __init__(self, client_config: KafkaConfig, topic: str, since_ms: int) -> None:
        self.topic = topic
        self._consumer = Consumer(
            {
                **client_config,
                "group.id": f"lookalike-tail-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            self._assign(since_ms)
        except BaseException:
            self._consumer.close()
            raise

    def _assign(self, since_ms: int) -> None:
        try:
            meta = self._consumer.list_topics(self.topic, timeout=10)
        except KafkaException as exc:
            raise BrokerUnavailable(f"cannot follow {self.topic}: {exc}") from None
        partitions = sorted(meta.topics[self.topic].partitions) if self.topic in meta.topics else []
        if not partitions:
            raise MessagingError(f"topic {self.topic} does not exist (yet): nothing to follow")
        wanted = [TopicPartition(self.topic, p, since_ms) for p in partitions]
        try:
            start = self._consumer.offsets_for_times(wanted, timeout=10)
        except KafkaException as exc:  # a broker without time lookups: read from the start
            log.warning("offsets by time unavailable (%s): following %s from its beginning", exc, self.topic)
            start = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions]
        self._consumer.assign(start)

    def read(self, max_messages: int = 1000, timeout_s: float = 0.05) -> list[Record]:
        """The records that arrived since the last read (at most ``max_messages``)."""
        out: list[Record] = []
        try:
            messages = self._consumer.consume(max_messages, timeout=timeout_s)
        except KafkaException as exc:
            raise BrokerUnavailable(f"reading {self.topic}: {exc}") from exc
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise BrokerUnavailable(f"reading {self.topic}: {err.str()}")
            headers = m.headers() or []
            out.append((list(headers.items()) if isinstance(headers, dict) else headers, m.value() or b""))
        return out

    def close(self) -> None:
        self._consumer.close()
