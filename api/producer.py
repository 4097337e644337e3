"""The API's Kafka producer: an upload is acknowledged only after the broker acknowledged it."""

from __future__ import annotations

import threading
import time

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from lookalike.settings import KafkaSettings
from schemas.messages import Headers


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge in time (API: 503)."""


class ApiProducer:
    def __init__(self, kafka: KafkaSettings, timeout_s: float = 10.0) -> None:
        self.kafka, self.timeout_s = kafka, timeout_s
        conf = kafka.client_config()
        self._admin = AdminClient(conf)
        self._producer = Producer(
            {
                **conf,
                "enable.idempotence": True,
                "acks": "all",
                "message.max.bytes": kafka.max_message_bytes + 64 * 1024,
            }
        )

    def send(self, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
        """Produce one message and wait for the broker's acknowledgement."""
        done = threading.Event()
        failure: list[KafkaError] = []

        def delivered(err: KafkaError | None, _: Message) -> None:
            if err is not None:
                failure.append(err)
            done.set()

        self._producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
        deadline = time.monotonic() + self.timeout_s
        while not done.is_set() and time.monotonic() < deadline:
            self._producer.poll(0.05)
        if not done.is_set():
            raise BrokerUnavailable(f"the broker did not acknowledge within {self.timeout_s:.0f}s")
        if failure:
            raise BrokerUnavailable(f"the broker refused the message: {failure[0].str()}")

    def check(self) -> str:
        try:
            self._admin.list_topics(timeout=2)
            return "ok"
        except Exception as exc:  # readiness reports any failure as its reason
            return f"unavailable: {exc}"

    def close(self) -> None:
        self._producer.flush(self.timeout_s)
