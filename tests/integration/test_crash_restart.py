"""A worker process SIGKILLed mid-stream, then a new one: every vector stored exactly once.

At the moment of the kill, every offset the group had committed must already be stored
(commit only after the store acknowledged); after the restart drains the topic, the store
holds each message's vector once and the committed offsets reach the end of every partition.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from config.settings import KafkaSettings
from messaging.admin import ensure_topics
from store import open_store
from tests.integration.kafka_helpers import (
    committed,
    image_ids_by_offset,
    produce_images,
    wait_until,
    worker_env,
    worker_process,
)

pytestmark = pytest.mark.integration
MESSAGES = 160


def test_sigkill_mid_stream_then_restart_stores_everything_once(
    broker: str, unique: str, tmp_path: Path
) -> None:
    kafka = KafkaSettings(
        bootstrap=broker, images_topic=f"img-{unique}", dlq_topic=f"dlq-{unique}", group=f"g-{unique}"
    )
    url = f"sqlite:///{tmp_path / 'lookalike.db'}"
    store = open_store(url)
    store.apply_schema()
    env, log = worker_env(kafka, url), tmp_path / "workers.log"

    ensure_topics(kafka.client_config(), [kafka.images_topic, kafka.dlq_topic], kafka.partitions)
    sent = produce_images(kafka, MESSAGES)
    with worker_process(env, "--delay", "0.2", log=log) as first:
        wait_until(lambda: store.count("features") >= 32, 90, "the first worker to store 32 vectors")
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    stored_at_kill = store.count("features")
    assert stored_at_kill < MESSAGES, "the worker was not killed mid-stream"

    by_offset = image_ids_by_offset(kafka, MESSAGES)
    assert sorted(by_offset.values()) == sorted(sent)
    done = committed(kafka)
    covered = [iid for (p, off), iid in by_offset.items() if off < done[p]]
    assert covered, "nothing was committed before the kill: the check below would be empty"
    missing = set(covered) - store.existing_images(covered, "vgg16_fc7")
    assert not missing, f"{len(missing)} committed messages have no stored vector"

    with worker_process(env, "--drain", log=log) as second:
        assert second.wait(120) == 0, log.read_text()[-3000:]

    assert store.count("features") == MESSAGES
    assert store.count("images") == MESSAGES
    assert store.existing_images(sent, "vgg16_fc7") == set(sent)
    # random listing ids may leave a partition empty: its end (and committed offset) is 0
    ends = {p: 1 + max((off for q, off in by_offset if q == p), default=-1) for p in range(kafka.partitions)}
    assert committed(kafka) == ends
    store.close()
