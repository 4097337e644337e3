"""Bad messages go to the dead-letter topic with their reason; the worker goes on."""

from __future__ import annotations

import io
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from PIL import Image
from prometheus_client import generate_latest
from typer.testing import CliRunner

from config.settings import ExtractSettings, KafkaSettings, ModelSettings, Settings
from lookalike import stack
from lookalike.cli import app
from messaging.broker import free_port
from messaging.errors import MessageTooLarge
from messaging.producer import KafkaProducer
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
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(jpeg_bytes() + bytes(10_000))
    bad = {
        "corrupt": _message(jpeg_bytes()[:200]),
        "not an image": _message(b"%PDF-1.4 not a photo"),
        "bomb": _message(_bomb()),
        "missing file": _message((tmp_path / "gone.jpg").as_uri().encode(), URI_LIST),
        "unreachable": _message(f"http://127.0.0.1:{free_port()}/a.jpg".encode(), URI_LIST),
        "enormous file": _message(huge.as_uri().encode(), URI_LIST),
        "s3": _message(b"s3://bucket/a.jpg", URI_LIST),
    }
    with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
        for m in [good[0], *bad.values(), *good[1:]]:
            producer.send(kafka.images_topic, m.key(), m.payload, m.headers())
        producer.send(kafka.images_topic, b"k", b"no headers at all", [])

        bad_id = [(k, b"not-a-uuid" if k == "image_id" else v) for k, v in good[0].headers()]
        producer.send(kafka.images_topic, b"k", good[0].payload, bad_id)

    settings = replace(
        Settings.from_env(),
        kafka=kafka,
        model=ModelSettings(max_pixels=4_000_000),
        extract=ExtractSettings(max_reference_bytes=8192, fetch_timeout_s=2, metrics_port=0),
    )
    stats, metrics = stack.run_extract(sqlite_store, tiny_model(), settings, drain=True)
    assert sqlite_store.count("features") == 3
    assert sqlite_store.existing_images([m.image_id for m in good], "vgg16_fc7") == {m.image_id for m in good}
    assert metrics.totals.dead_letters == 9 and stats.messages == 12
    body = generate_latest(metrics.registry).decode()
    assert 'lookalike_extract_dead_letters_total{stage="decode"} 7.0' in body
    assert 'lookalike_extract_dead_letters_total{stage="parse"} 2.0' in body

    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": f"check-{unique}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([kafka.dlq_topic])
    letters: list[Any] = []
    for _ in range(60):
        letters += [m for m in consumer.consume(10, 1.0) if m.error() is None]
        if len(letters) >= 9:
            break
    consumer.close()
    reasons = {dict(m.headers())["error"].decode(): dict(m.headers()).get("image_id") for m in letters}
    assert len(letters) == 9
    joined = " | ".join(reasons)
    for expected in (
        "corrupt image",
        "not a decodable image",
        "pixels, over the limit of 4000000",
        "gone.jpg",
        "cannot read http://127.0.0.1",
        "over the limit of 8192 bytes",
        "unsupported reference scheme 's3'",
        "missing headers",
        "bad id header",
    ):
        assert expected in joined
    assert all(dict(m.headers())["error_stage"] in (b"decode", b"parse") for m in letters)


def test_ingest_refuses_a_message_too_large_for_the_broker(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(MessageTooLarge, match=r"over the broker limit of 2048 .*--by-reference"):
        KafkaProducer({"bootstrap.servers": broker}, 2048).send("t", b"k", bytes(4096), [])
    (tmp_path / "listing").mkdir()
    (tmp_path / "listing" / "big.jpg").write_bytes(jpeg_bytes(0, (400, 300)))
    monkeypatch.setenv("LOOKALIKE_KAFKA_BOOTSTRAP", broker)
    monkeypatch.setenv("LOOKALIKE_KAFKA_MAX_MESSAGE_BYTES", "2048")
    result = CliRunner().invoke(app, ["ingest", "images", str(tmp_path)])
    assert result.exit_code == 2 and "over the broker limit of 2048" in result.output
