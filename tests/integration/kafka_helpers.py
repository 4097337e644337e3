"""Helpers for the delivery tests: produce test images, read a topic back, read a group's
committed offsets, run worker processes (always stopped, also when a test fails)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from config.settings import KafkaSettings
from messaging.producer import KafkaProducer
from schemas.messages import ImageMessage
from tests.conftest import jpeg_bytes

ROOT = Path(__file__).resolve().parents[2]


def produce_images(kafka: KafkaSettings, n: int, listings: int = 16) -> list[uuid.UUID]:
    """``n`` small JPEGs over ``listings`` listings (so over all partitions); their image ids."""
    listing_ids = [uuid.uuid4() for _ in range(listings)]
    sent = []
    with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
        for i in range(n):
            m = ImageMessage(
                listing_ids[i % listings], uuid.uuid4(), f"l{i % listings}", "image/jpeg", "t", jpeg_bytes(i)
            )
            producer.send(kafka.images_topic, m.key(), m.payload, m.headers())
            sent.append(m.image_id)
    return sent


def partitions(kafka: KafkaSettings) -> list[TopicPartition]:
    return [TopicPartition(kafka.images_topic, p) for p in range(kafka.partitions)]


def committed(kafka: KafkaSettings, model: str = "vgg16_fc7") -> dict[int, int]:
    """The committed offset per partition (0 where none) of one model's extract workers."""
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": kafka.extract_group(model)})
    try:
        return {tp.partition: max(tp.offset, 0) for tp in c.committed(partitions(kafka), timeout=10)}
    finally:
        c.close()


def image_ids_by_offset(kafka: KafkaSettings, expected: int) -> dict[tuple[int, int], uuid.UUID]:
    """(partition, offset) -> image id of every message on the images topic."""
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"read-{uuid.uuid4().hex[:6]}"})
    c.assign([TopicPartition(kafka.images_topic, p, 0) for p in range(kafka.partitions)])
    found: dict[tuple[int, int], uuid.UUID] = {}
    try:
        deadline = time.monotonic() + 60
        while len(found) < expected and time.monotonic() < deadline:
            for m in c.consume(100, 0.5):
                if m.error() is None:
                    message = ImageMessage.from_kafka(m.headers(), m.value())
                    found[(m.partition() or 0, m.offset() or 0)] = message.image_id
    finally:
        c.close()
    return found


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def worker_env(kafka: KafkaSettings, store_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    return {
        **env,
        "LOOKALIKE_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "LOOKALIKE_KAFKA_IMAGES_TOPIC": kafka.images_topic,
        "LOOKALIKE_KAFKA_DLQ_TOPIC": kafka.dlq_topic,
        "LOOKALIKE_KAFKA_GROUP": kafka.group,
        "LOOKALIKE_STORE": store_url,
        "LOOKALIKE_MODEL_BATCH_SIZE": "8",
        "LOOKALIKE_EXTRACT_SESSION_TIMEOUT_MS": "6000",
        "LOOKALIKE_EXTRACT_METRICS_PORT": "0",
    }


@contextmanager
def worker_process(env: dict[str, str], *args: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m tests.integration.worker_entry ARGS``; killed on the way out if still running."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.worker_entry", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
