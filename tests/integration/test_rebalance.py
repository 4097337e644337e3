"""Two workers in one group: one joins mid-stream, then the first leaves; nothing is lost."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from config.settings import ExtractSettings, KafkaSettings, ModelSettings, Settings
from extract.metrics import ExtractMetrics
from lookalike import stack
from messaging.admin import ensure_topics
from store import open_store
from tests.integration.kafka_helpers import committed, image_ids_by_offset, produce_images, wait_until
from tests.integration.worker_entry import slow_tiny_model

pytestmark = pytest.mark.integration
MESSAGES = 400


class Worker:
    """``stack.run_extract`` in a thread with its own store connection, stopped on request."""

    def __init__(self, kafka: KafkaSettings, url: str) -> None:
        self.metrics, self.stop = ExtractMetrics(), threading.Event()
        self.store = open_store(url)
        self.error: BaseException | None = None
        self.model = slow_tiny_model(0.2)
        self.settings = replace(
            Settings.from_env(),
            kafka=kafka,
            model=ModelSettings(batch_size=8),
            extract=ExtractSettings(session_timeout_ms=6000, metrics_port=0),
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            stack.run_extract(self.store, self.model, self.settings, stop=self.stop, metrics=self.metrics)
        except BaseException as exc:
            self.error = exc
            raise

    @property
    def stored(self) -> int:
        return self.metrics.totals.images

    def leave(self) -> None:
        self.stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "worker did not stop"
        assert self.error is None, self.error
        self.store.close()


def test_a_worker_joining_and_one_leaving_lose_nothing(broker: str, unique: str, tmp_path: Path) -> None:
    kafka = KafkaSettings(
        bootstrap=broker, images_topic=f"img-{unique}", dlq_topic=f"dlq-{unique}", group=f"g-{unique}"
    )
    url = f"sqlite:///{tmp_path / 'lookalike.db'}"
    store = open_store(url)
    store.apply_schema()
    ensure_topics(kafka.client_config(), [kafka.images_topic, kafka.dlq_topic], kafka.partitions)
    sent = produce_images(kafka, MESSAGES)

    first = Worker(kafka, url)
    second = None
    try:
        wait_until(lambda: first.stored >= 16, 60, "the first worker to start storing")
        second = Worker(kafka, url)
        wait_until(lambda: second.stored >= 16, 60, "the second worker to get partitions and store")
        assert first.stored < MESSAGES - 16, "the first worker finished before the rebalance"
        first.leave()  # mid-stream: its partitions move to the second worker
        wait_until(lambda: store.count("features") == MESSAGES, 120, "every vector stored")
        by_offset = image_ids_by_offset(kafka, MESSAGES)
        # random listing ids may leave a partition empty: its end (and committed offset) is 0
        ends = {p: 1 + max((o for q, o in by_offset if q == p), default=-1) for p in range(kafka.partitions)}
        wait_until(lambda: committed(kafka) == ends, 30, "the group to commit every partition's end")
    finally:
        for w in (first, second):
            if w is not None and not w.stop.is_set():
                w.leave()
    assert second is not None
    assert store.existing_images(sent, "vgg16_fc7") == set(sent)
    assert store.count("features") == MESSAGES
    assert first.stored < MESSAGES and first.stored + second.stored >= MESSAGES  # second took over
    assert first.metrics.totals.dead_letters == second.metrics.totals.dead_letters == 0
    store.close()
