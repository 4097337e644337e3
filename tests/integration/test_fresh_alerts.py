"""Images stored after the last analytics run, on the real broker: the index follower (wired by the
roof, ``lookalike.stack``) scores each arrival against the run; a cross-listing copy and an
off-topic image each produce an alert on the alerts topic, keyed by listing; an ordinary new view
and a copy inside its own listing produce none."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from config.settings import KafkaSettings, SearchSettings, Settings
from lookalike import stack
from messaging.admin import ensure_topics
from messaging.producer import KafkaProducer
from schemas.alerts import Alert, parse_alert
from schemas.codec import l2_normalise
from schemas.messages import ImageMessage
from schemas.records import Extracted, ImageRecord, as_uuid
from store.sqlite import SQLiteStore
from tests.integration.analytics_seed import MODEL, seed_store

pytestmark = pytest.mark.integration


def _arrival(listing: uuid.UUID, vector: np.ndarray) -> Extracted:
    record = ImageRecord(listing, uuid.uuid4(), "test://none", "image/jpeg", 1, 1, 1)
    return Extracted(record, "arrival", MODEL.name, l2_normalise(vector.astype(np.float32)))


def test_arrivals_are_scored_and_alerted(broker: str, unique: str, tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'lookalike.db'}")
    store.apply_schema()
    seeded = seed_store(store, None)
    cat, img = seeded.planted.catalogue, seeded.result.images
    # an ordinary image: middling outlier score, in no duplicate group
    calm = [r for r in np.argsort(img.outlier_pct) if 30 <= img.outlier_pct[r] <= 60 and img.group[r] < 0]
    row_of = {bytes(i).ljust(16, b"\0"): r for r, i in enumerate(cat.image_ids)}
    source = row_of[bytes(img.image_ids[calm[0]]).ljust(16, b"\0")]
    sibling = row_of[bytes(img.image_ids[calm[1]]).ljust(16, b"\0")]
    own = as_uuid(cat.listing_ids[source])
    elsewhere = next(as_uuid(x) for x in cat.listing_ids if as_uuid(x) != own)
    rng = np.random.default_rng(5)
    copy = _arrival(elsewhere, cat.vectors[source] + 0.002 * rng.normal(size=MODEL.dim))  # re-encoded copy
    off_topic = _arrival(elsewhere, rng.normal(size=MODEL.dim))
    own_copy = _arrival(
        as_uuid(cat.listing_ids[sibling]), cat.vectors[sibling] + 0.002 * rng.normal(size=MODEL.dim)
    )

    kafka = KafkaSettings(
        bootstrap=broker, images_topic=f"img-{unique}", alerts_topic=f"alerts-{unique}", partitions=2
    )
    ensure_topics(kafka.client_config(), [kafka.images_topic], 2)
    settings = dataclasses.replace(
        Settings.from_env(), kafka=kafka, search=SearchSettings(follow="stream", follow_interval_s=0.05)
    )
    service = stack.search_service(settings, store, MODEL.name, score_arrivals=True)
    follower = service.index.follower
    assert follower is not None and follower.observers, "the roof wires the fresh scorer into the follower"
    try:
        arrivals = [copy, off_topic, own_copy]
        store.write_extracted(arrivals, MODEL.dtype)  # as the extract workers would
        with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
            for e in arrivals:
                m = ImageMessage(
                    e.image.listing_id, e.image.image_id, "arrival", "image/jpeg", "test://", b"x"
                )
                producer.send(kafka.images_topic, m.key(), m.payload, m.headers())
        alerts = _read(kafka, expected=2)
    finally:
        follower.stop()
        follower.source.close()
        for scorer in follower.observers:
            scorer.close()
        store.close()

    by_image = {a.image_id: a for _, a in alerts}
    assert set(by_image) == {copy.image.image_id, off_topic.image.image_id}, alerts
    dup = by_image[copy.image.image_id]
    assert dup.reason == "cross_listing_duplicate" and dup.listing_id == elsewhere
    assert dup.evidence[0].image_id == as_uuid(cat.image_ids[source]) and dup.evidence[0].listing_id == own
    assert dup.score >= dup.threshold == pytest.approx(0.95)
    odd = by_image[off_topic.image.image_id]
    assert odd.reason == "outlier" and odd.percentile is not None and odd.percentile >= 99.0
    assert odd.run_id == seeded.result.run.run_id and len(odd.evidence) == 5
    assert all(key == str(a.listing_id).encode() for key, a in alerts)  # keyed by listing
    assert follower.observers[0].scored == 3


def _read(kafka: KafkaSettings, expected: int, timeout_s: float = 60.0) -> list[tuple[bytes | None, Alert]]:
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"read-{uuid.uuid4().hex[:6]}"})
    c.assign([TopicPartition(kafka.alerts_topic, p, 0) for p in range(kafka.partitions)])
    found: list[tuple[bytes | None, Alert]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(found) < expected and time.monotonic() < deadline:
            for m in c.consume(10, 0.5):
                if m.error() is None:
                    found.append((m.key(), parse_alert(m.value())))
        time.sleep(1.0)  # nothing more arrives (the ordinary arrival raised none)
        found += [(m.key(), parse_alert(m.value())) for m in c.consume(10, 1.0) if m.error() is None]
    finally:
        c.close()
    assert len(found) >= expected, f"{len(found)} alerts on {kafka.alerts_topic}, expected {expected}"
    return found
