"""Ingest over HTTP into the real broker: the upload lands on the images topic, keyed by
listing, with ids and the content type read from the bytes."""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from api.app import create_app
from config.settings import ApiSettings, BlobSettings, KafkaSettings, Settings
from lookalike.stack import api_components
from messaging.consumer import consumer_config
from schemas import ids
from schemas.messages import DeleteMessage, ImageMessage, parse_image_topic
from tests.integration.test_api import LISTINGS, seeded_service

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "k"}


def _read(broker: str, topic: str, n: int) -> list[Any]:
    consumer = Consumer(consumer_config({"bootstrap.servers": broker}, f"read-{topic}"))
    consumer.subscribe([topic])
    messages: list[Any] = []
    for _ in range(60):
        messages += [m for m in consumer.consume(10, 1.0) if m.error() is None]
        if len(messages) >= n:
            break
    consumer.close()
    return messages


def tmp_blobs(tmp_path: Path) -> BlobSettings:
    """Pixels and the ingest outbox in the test's folder, not the checkout's data/."""
    return BlobSettings(url=(tmp_path / "blobs").as_uri())


def test_upload_and_stock_reach_the_broker(broker: str, sqlite_store, tmp_path: Path, unique: str) -> None:  # type: ignore[no-untyped-def]
    from messaging.admin import ensure_topics

    kafka = KafkaSettings(bootstrap=broker, images_topic=f"img-{unique}", stock_topic=f"stock-{unique}")
    ensure_topics(kafka.client_config(), [kafka.images_topic, kafka.stock_topic], 2)
    png = io.BytesIO()
    Image.new("RGB", (20, 10), "red").save(png, format="PNG")
    settings = replace(Settings.from_env(), kafka=kafka, blobs=tmp_blobs(tmp_path))
    app = create_app(
        ApiSettings(keys=[SecretStr("k")]), api_components(settings, seeded_service(sqlite_store, tmp_path))
    )
    with TestClient(app) as c:
        assert c.get("/readyz").json()["checks"]["broker"] == "ok"
        # named .jpg, but the bytes are a PNG: the type comes from the content
        files = {"image": ("photo.jpg", png.getvalue(), "image/jpeg")}
        first = c.post("/v1/images", files=files, data={"listing": "red car"}, headers=KEY)
        assert first.status_code == 202, first.text
        again = c.post("/v1/images", files=files, data={"listing": "red car"}, headers=KEY)
        assert again.json()["image_id"] == first.json()["image_id"]  # same bytes, same id
        bad = c.post(
            "/v1/images",
            files={"image": ("x.jpg", b"GIF89a broken", "image/gif")},
            data={"listing": "red car"},
            headers=KEY,
        )
        assert bad.status_code == 422 and "not a usable image" in bad.text
        stock = c.post("/v1/stock", json={"listing": "red car", "inventory": 3}, headers=KEY)
        assert stock.status_code == 202
        assert c.post("/v1/stock", json={"inventory": 3}, headers=KEY).status_code == 422

    images = _read(broker, kafka.images_topic, 2)
    assert len(images) == 2
    message = ImageMessage.from_kafka(images[0].headers(), images[0].value())
    assert message.listing_id == ids.listing_id("red car") and message.content_type == "image/png"
    assert images[0].key() == str(ids.listing_id("red car")).encode()
    (level,) = _read(broker, kafka.stock_topic, 1)
    assert json.loads(level.value())["inventory"] == 3


def test_removals_reach_the_broker_and_leave_the_results_at_once(  # type: ignore[no-untyped-def]
    broker: str, sqlite_store, tmp_path: Path, unique: str
) -> None:
    from messaging.admin import ensure_topics

    kafka = KafkaSettings(bootstrap=broker, images_topic=f"img-{unique}")
    ensure_topics(kafka.client_config(), [kafka.images_topic], 2)
    service = seeded_service(sqlite_store, tmp_path)
    app = create_app(
        ApiSettings(keys=[SecretStr("k")]),
        api_components(replace(Settings.from_env(), kafka=kafka, blobs=tmp_blobs(tmp_path)), service),
    )
    image_listing, gone_listing = LISTINGS["listing-3"], LISTINGS["listing-4"]
    image = sqlite_store.listing_images(image_listing)[0].image_id
    with TestClient(app) as c:
        assert c.delete(f"/v1/images/{image}").status_code == 401
        unknown = c.delete(f"/v1/images/{uuid.uuid4()}", headers=KEY)
        assert unknown.status_code == 404 and "is not stored" in unknown.text
        assert c.delete(f"/v1/listings/{uuid.uuid4()}", headers=KEY).status_code == 404
        assert c.delete("/v1/images/not-a-uuid", headers=KEY).status_code == 422

        r = c.delete(f"/v1/images/{image}", headers=KEY)
        assert r.status_code == 202, r.text
        assert r.json()["listing_id"] == str(image_listing)
        assert c.post("/v1/search", json={"image_id": str(image)}).status_code == 404
        assert c.delete(f"/v1/listings/{gone_listing}", headers=KEY).status_code == 202
        assert c.post("/v1/search", json={"listing_id": str(gone_listing)}).status_code == 404
        results = c.post("/v1/search", json={"listing_id": str(image_listing), "k": 10}).json()["results"]
        assert str(gone_listing) not in [x["listing_id"] for x in results]
        assert len(results) == 3  # five listings, less the query's own and the removed one

    removals = [parse_image_topic(m.headers(), m.value()) for m in _read(broker, kafka.images_topic, 2)]
    assert sorted(removals, key=str) == sorted(
        [DeleteMessage(image_listing, image), DeleteMessage(gone_listing)], key=str
    )
