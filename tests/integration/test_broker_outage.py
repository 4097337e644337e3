"""A broker outage longer than every client timeout is waited out: no worker dies of it, and
the same worker process finishes once the broker is back, every image stored exactly once.

The issue's failure first: the lag metric's ``committed(...)`` lookup timing out
(``Failed to get committed offsets: Local: Timed out``, raised from ``ConsumerLoop.lag()`` by
``_report_lag`` inside ``run()``) used to stop the loop; now an observation never stops the work.

The embedded broker (Tansu) keeps everything in memory: stopped and started again on the same
port it comes back empty, without the topic's messages or the group's committed offsets. The
worker test therefore produces the very same messages again, in the same order, once the broker
is back: what a durable broker (Apache Kafka) would still hold. Same keys, same partition
count: each message lands on the partition and at the offset it had, so whether the worker's
consumer goes on from its own positions (it skips exactly what it already read) or starts
over (it stores the first ones again: upserts, the same rows), every image ends up stored once.
"""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from config.settings import KafkaSettings
from messaging.admin import ensure_topics
from messaging.broker import EmbeddedBroker, free_port
from messaging.consumer import ConsumerLoop, Message
from messaging.producer import KafkaProducer
from schemas.messages import ImageMessage
from store import open_store
from tests.conftest import jpeg_bytes
from tests.integration.kafka_helpers import wait_until, worker_env, worker_process

pytestmark = pytest.mark.integration
MESSAGES = 160


class Observer:
    """What the loop reports: every broker state change, the lag."""

    def __init__(self) -> None:
        self.broker_states: list[tuple[bool, str]] = []
        self.lags: list[int] = []

    def stage(self, name: str, seconds: float) -> None:
        pass

    def consumer_lag(self, messages: int) -> None:
        self.lags.append(messages)

    def broker(self, up: bool, status: str) -> None:
        self.broker_states.append((up, status))


def produce(bootstrap: str, topic: str, messages: Sequence[tuple[bytes, bytes]]) -> None:
    with KafkaProducer({"bootstrap.servers": bootstrap}, 1_000_000) as producer:
        for key, value in messages:
            producer.send(topic, key, value, [])


def partition_count(bootstrap: str, topic: str) -> int:
    return len(
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10).topics[topic].partitions
    )


def test_a_lag_lookup_timing_out_during_an_outage_never_stops_the_loop(unique: str) -> None:
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    topic = f"t-{unique}"
    ensure_topics({"bootstrap.servers": broker.bootstrap}, [topic], 2)
    produce(broker.bootstrap, topic, [(str(i).encode(), b"before") for i in range(4)])
    got: list[bytes] = []
    observer = Observer()

    def handle(batch: Sequence[Message]) -> None:
        got.extend(m.value() or b"" for m in batch)

    loop = ConsumerLoop(
        {"bootstrap.servers": broker.bootstrap},
        f"g-{unique}",
        [topic],
        handle,
        session_timeout_ms=6000,
        observer=observer,
        lag_interval_s=0.0,  # look the lag up on every turn: the outage meets it at once
    )
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            loop.run(stop)
        except BaseException as exc:  # what used to end the worker (the traceback)
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_until(lambda: len(got) == 4 and bool(observer.lags), 60, "the first messages and a lag")
        broker.stop()
        timed_out = "Failed to get committed offsets"
        wait_until(
            lambda: bool(failures) or any(timed_out in s for _, s in observer.broker_states),
            60,
            "the lag lookup to time out",
        )
        assert not failures, failures
        assert thread.is_alive() and not loop.health.up
        assert "unavailable" in loop.health.status

        broker = EmbeddedBroker(port=port).start()  # back on the same port, empty (see above)
        ensure_topics({"bootstrap.servers": broker.bootstrap}, [topic], 2)
        produce(broker.bootstrap, topic, [(b"k", b"after")])
        wait_until(lambda: b"after" in got or bool(failures), 120, "the same loop to read again")
        wait_until(lambda: loop.health.up, 60, "the loop to see the broker back")
        assert not failures and observer.broker_states[-1] == (True, "ok")
    finally:
        stop.set()
        thread.join(60)
        loop.close()
        broker.stop()
    assert not thread.is_alive() and not failures


def test_a_worker_rides_out_a_broker_outage_mid_stream_and_stores_everything_once(
    unique: str, tmp_path: Path
) -> None:
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    kafka = KafkaSettings(
        bootstrap=broker.bootstrap,
        images_topic=f"img-{unique}",
        dlq_topic=f"dlq-{unique}",
        group=f"g-{unique}",
    )
    url = f"sqlite:///{tmp_path / 'lookalike.db'}"
    store = open_store(url)
    store.apply_schema()
    listings = [uuid.uuid4() for _ in range(16)]
    messages = [
        ImageMessage(listings[i % 16], uuid.uuid4(), f"l{i % 16}", "image/jpeg", "t", jpeg_bytes(i))
        for i in range(MESSAGES)
    ]
    sent = [m.image_id for m in messages]

    def produce_all() -> None:
        ensure_topics(kafka.client_config(), [kafka.images_topic, kafka.dlq_topic], kafka.partitions)
        assert partition_count(kafka.bootstrap, kafka.images_topic) == kafka.partitions
        with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
            for m in messages:
                producer.send(kafka.images_topic, m.key(), m.payload, m.headers())

    log = tmp_path / "worker.log"
    produce_all()
    try:
        with worker_process(worker_env(kafka, url), "--delay", "1.0", log=log) as worker:
            wait_until(lambda: store.count("features") >= 16, 120, "the worker to store 16 vectors")
            broker.stop()  # for longer than the session (6s), lag (5s) and commit timeouts
            wait_until(
                lambda: "lost" in log.read_text() and "broker unavailable" in log.read_text(),
                120,
                "the worker to lose its partitions to the outage",
            )
            assert worker.poll() is None, log.read_text()[-3000:]
            stored_in_the_outage = store.count("features")
            assert stored_in_the_outage < MESSAGES, "the outage did not come mid-stream"

            broker = EmbeddedBroker(port=port).start()  # the same address, empty (see above)
            produce_all()
            wait_until(
                lambda: store.count("features") == MESSAGES or worker.poll() is not None,
                300,
                "the same worker to store every image",
            )
            assert worker.poll() is None, log.read_text()[-3000:]  # never restarted
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(60) == 0, log.read_text()[-3000:]
    finally:
        broker.stop()
    text = log.read_text()
    assert "broker back after" in text and "Traceback" not in text, text[-3000:]
    assert store.count("features") == MESSAGES and store.count("images") == MESSAGES
    assert store.existing_images(sent, "vgg16_fc7") == set(sent)
    store.close()
