"""Following the extract stream on the real broker: an image announced on the images topic is
searchable once a worker has stored its vector, without reloading the index; a removal on the
topic takes the image or listing out at once."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from config.settings import SearchSettings
from messaging.admin import ensure_topics
from messaging.producer import KafkaProducer
from schemas.codec import l2_normalise
from schemas.messages import DeleteMessage, ImageMessage
from schemas.records import Extracted, ImageRecord, ModelInfo
from search.follow import Follower
from search.follow_kafka import ImageStreamSource
from search.loader import load_index
from search.scoring import ScoreOptions

pytestmark = pytest.mark.integration
DIM = 8
MODEL = ModelInfo("vgg16_fc7", "test", DIM, "float16", "random:test")


def stored_image(rng: np.random.Generator, listing: uuid.UUID) -> Extracted:
    record = ImageRecord(listing, uuid.uuid4(), "test://", "image/jpeg", 1, 1, 1)
    return Extracted(record, "follow", MODEL.name, l2_normalise(rng.normal(size=DIM)))


def test_announced_images_become_searchable(broker, sqlite_store, unique) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    conf: dict[str, str | int | float | bool] = {"bootstrap.servers": broker}
    topic = f"images-{unique}"
    ensure_topics(conf, [topic], 2)
    sqlite_store.put_model(MODEL)
    sqlite_store.write_extracted([stored_image(rng, uuid.uuid4()) for _ in range(5)], MODEL.dtype)
    index = load_index(sqlite_store, MODEL, SearchSettings(follow="off"))
    source = ImageStreamSource(conf, topic, sqlite_store, MODEL, index, int(time.time() * 1000) - 5000)
    follower = Follower(index, source, interval_s=0.05).start()
    try:
        new = [stored_image(rng, uuid.uuid4()) for _ in range(3)]
        never = stored_image(rng, uuid.uuid4())  # announced, never stored (dead-lettered)
        with KafkaProducer(conf, 1_000_000) as producer:
            for e in [*new, never]:
                msg = ImageMessage(
                    e.image.listing_id, e.image.image_id, "x", "image/jpeg", "test://", b"pixels"
                )
                producer.send(topic, msg.key(), msg.payload, msg.headers())
        time.sleep(0.3)
        assert len(index) == 5  # announced but not extracted yet: nothing to add
        sqlite_store.write_extracted(new, MODEL.dtype)
        deadline = time.monotonic() + 30
        while len(index) < 8:
            assert time.monotonic() < deadline, f"only {len(index)} of 8 vectors searchable"
            time.sleep(0.05)
        for e in new:
            top = index.search(e.vector, ScoreOptions(k=1))[0]
            assert top.listing_id == e.image.listing_id
        assert never.image.image_id in source.pending
    finally:
        follower.stop()
        source.close()


def test_removals_on_the_stream_leave_the_index(broker, sqlite_store, unique) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    conf: dict[str, str | int | float | bool] = {"bootstrap.servers": broker}
    topic = f"images-{unique}"
    ensure_topics(conf, [topic], 2)
    listing, other = uuid.uuid4(), uuid.uuid4()
    rows = [stored_image(rng, listing) for _ in range(3)] + [stored_image(rng, other) for _ in range(2)]
    sqlite_store.put_model(MODEL)
    sqlite_store.write_extracted(rows, MODEL.dtype)
    index = load_index(sqlite_store, MODEL, SearchSettings(follow="off"))
    source = ImageStreamSource(conf, topic, sqlite_store, MODEL, index, int(time.time() * 1000) - 5000)
    follower = Follower(index, source, interval_s=0.05).start()
    try:
        waiting = stored_image(rng, other)  # announced, then its listing removed before it was stored
        announced = ImageMessage(other, waiting.image.image_id, "x", "image/jpeg", "test://", b"pixels")
        with KafkaProducer(conf, 1_000_000) as producer:
            producer.send(topic, announced.key(), announced.payload, announced.headers())
            for removal in (DeleteMessage(listing, rows[0].image.image_id), DeleteMessage(other)):
                producer.send(topic, removal.key(), b"", removal.headers())
        deadline = time.monotonic() + 30
        while len(index) > 2:
            assert time.monotonic() < deadline, f"{len(index)} vectors left, expected 2"
            time.sleep(0.05)
        assert index.listing_count == 1
        top = index.search(rows[1].vector, ScoreOptions(k=5))
        assert [r.listing_id for r in top] == [listing]
        assert rows[0].image.image_id not in {i for i, _ in top[0].matches}
        assert waiting.image.image_id not in source.pending
        sqlite_store.write_extracted([waiting], MODEL.dtype)  # a worker behind the follower stores it
        time.sleep(0.5)
        assert len(index) == 2
    finally:
        follower.stop()
        source.close()
