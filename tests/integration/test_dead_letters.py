"""Bad messages go to the dead-letter topic with their reason; the worker goes on."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from PIL import Image

from ingest.producer import KafkaProducer
from lookalike import stack
from lookalike.settings import KafkaSettings, ModelSettings
from schemas.messages import URI_LIST, ImageMessage
from tests.conftest import jpeg_bytes, tiny_model

pytestmark = pytest.mark.integration


def _message(payload: bytes, content_type: str = "image/jpeg") -> ImageMessage:
    return ImageMessage(uuid.uuid4(), uuid.uuid4(), "listing", content_type, "test", payload)


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4000, 4000)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_payloads_are_dead_lettered(broker: str, sqlite_store, unique: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kafka = KafkaSettings(
        bootstrap=broker,
        images_topic=f"img-{unique}",
        dlq_topic=f"dlq-{unique}",
        group=f"g-{unique}",
    )
    good = [_message(jpeg_bytes(i)) for i in range(3)]
    bad = {
        "corrupt": _message(jpeg_bytes()[:200]),
        "not an image": _message(b"%PDF-1.4 not a photo"),
        "bomb": _message(_bomb()),
        "missing file": _message((tmp_path / "gone.jpg").as_uri().encode(), URI_LIST),
    }
    with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
        for m in [good[0], *bad.values(), *good[1:]]:
            producer.send(kafka.images_topic, m.key(), m.payload, m.headers())
        producer.send(kafka.images_topic, b"k", b"no headers at all", [])

    stats, handler = stack.run_extract(
        sqlite_store, tiny_model(), kafka, ModelSettings(max_pixels=4_000_000), drain=True
    )
    assert sqlite_store.count("features") == 3
    assert sqlite_store.existing_images([m.image_id for m in good], "vgg16_fc7") == {m.image_id for m in good}
    assert handler.times.dead_letters == 5 and stats.messages == 8

    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": f"check-{unique}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([kafka.dlq_topic])
    letters = []
    for _ in range(60):
        letters += [m for m in consumer.consume(10, 1.0) if m.error() is None]
        if len(letters) >= 5:
            break
    consumer.close()
    reasons = {dict(m.headers())["error"].decode(): dict(m.headers()).get(b"image_id") for m in letters}
    assert len(letters) == 5
    joined = " | ".join(reasons)
    for expected in (
        "corrupt image",
        "not a decodable image",
        "over the limit",
        "cannot read",
        "missing headers",
    ):
        assert expected in joined
    assert all(dict(m.headers())["error_stage"] in (b"decode", b"parse") for m in letters)
