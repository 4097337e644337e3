"""The one Kafka producer: idempotent, ``acks=all``, delivery confirmed through callbacks.

``send`` queues (bulk ingest: ``flush`` at the end raises if any message failed);
``send_and_wait`` returns only once the broker acknowledged that one message (an API upload is
acknowledged to its client only then). A producer built with ``delivery_timeout_s`` gives each
message up after that long (librdkafka's ``message.timeout.ms``) and ``send_and_wait`` waits for
that verdict, so a message it reports failed is not delivered later behind the caller's back
(a refused upload must not be stored once the broker comes back).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from config.settings import KafkaConfig
from messaging.errors import BrokerUnavailable, MessageTooLarge
from schemas.messages import Headers

HEADROOM = 64 * 1024  # headers and framing on top of the value
VERDICT_GRACE_S = 5.0  # past a bounded delivery timeout: librdkafka's failure report is due
Delivered = Callable[[KafkaError | None, Message], None]


@dataclass
class _Deliveries:
    ok: int = 0
    errors: list[str] = field(default_factory=list)

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.ok += 1
        else:
            self.errors.append(f"{msg.topic()}: {err.str()}")


class KafkaProducer:
    """A confluent-kafka producer with delivery accounting."""

    def __init__(
        self,
        client_config: KafkaConfig,
        max_message_bytes: int,
        ack_timeout_s: float = 10.0,
        delivery_timeout_s: float | None = None,
    ) -> None:
        self.max_message_bytes, self.ack_timeout_s = max_message_bytes, ack_timeout_s
        self.delivery_timeout_s = delivery_timeout_s
        self.deliveries = _Deliveries()
        self._closed = False
        bounded = {"message.timeout.ms": int(delivery_timeout_s * 1000)} if delivery_timeout_s else {}
        self._producer = Producer(
            {
                **client_config,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "message.max.bytes": max_message_bytes + HEADROOM,
                **bounded,
            }
        )

    def _check_size(self, topic: str, value: bytes) -> None:
        if len(value) > self.max_message_bytes:
            raise MessageTooLarge(
                f"message of {len(value)} bytes for {topic} is over the broker limit of "
                f"{self.max_message_bytes} (LOOKALIKE_KAFKA_MAX_MESSAGE_BYTES); "
                "send a reference instead (--by-reference)"
            )

    def send(self, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
        """Queue one message; its delivery is counted by :meth:`flush`."""
        self._check_size(topic, value)
        self._produce(topic, key, value, headers, self.deliveries)
        self._producer.poll(0)

    def send_and_wait(self, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
        """Produce one message and wait for the broker's acknowledgement."""
        self._check_size(topic, value)
        done = threading.Event()
        failure: list[KafkaError] = []

        def delivered(err: KafkaError | None, _: Message) -> None:
            if err is not None:
                failure.append(err)
            done.set()

        self._produce(topic, key, value, headers, delivered)
        # bounded delivery: wait for librdkafka's own verdict (a little after it gives up)
        wait_s = self.delivery_timeout_s + VERDICT_GRACE_S if self.delivery_timeout_s else self.ack_timeout_s
        deadline = time.monotonic() + wait_s
        while not done.is_set() and time.monotonic() < deadline:
            self._producer.poll(0.05)
        if not done.is_set():
            raise BrokerUnavailable(f"the broker did not acknowledge within {wait_s:.0f}s")
        if failure:
            raise BrokerUnavailable(f"the broker refused the message: {failure[0].str()}")

    def _produce(self, topic: str, key: bytes, value: bytes, headers: Headers, callback: Delivered) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, headers=headers, on_delivery=callback)
                return
            except BufferError:  # local queue full: serve callbacks, then try again
                self._producer.poll(0.5)
            except KafkaException as exc:
                raise BrokerUnavailable(f"cannot produce to {topic}: {exc}") from exc

    def flush(self, timeout_s: float = 60.0) -> int:
        """Wait for every queued message; the number acknowledged. Raises BrokerUnavailable when
        any was not."""
        left = self._producer.flush(timeout_s)
        if left or self.deliveries.errors:
            raise BrokerUnavailable(
                f"{left} message(s) undelivered, {len(self.deliveries.errors)} failed: "
                f"{self.deliveries.errors[:3]}"
            )
        return self.deliveries.ok

    def close(self) -> None:
        """Deliver what is queued (up to the ack timeout), then release the client now: one left
        to the garbage collector can outlive its broker and keep reconnecting until exit.
        Closing twice is harmless (an app's shutdown may run more than once)."""
        if self._closed:
            return
        self._producer.flush(self.ack_timeout_s)
        self._release()

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._producer.purge()  # what is still queued is dropped: close() would wait for it
        self._producer.close()

    def __enter__(self) -> KafkaProducer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if t is None:
                self.flush()
        finally:
            self._release()
