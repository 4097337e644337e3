"""Every image's pixels kept: uploads and file references go through the real broker and the
worker into the blob store; the API serves content and thumbnails from it; removals take the
pixels too; a blob store that stays unreachable stops the worker with nothing committed."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from api.deps import Components
from config.settings import ApiSettings, BlobSettings, KafkaSettings, Settings
from extract.pipeline import PipelineFailed
from lookalike import stack
from messaging.producer import KafkaProducer
from schemas.messages import URI_LIST, DeleteMessage, ImageMessage
from search.loader import load_index
from search.service import SearchService
from store import Store
from store.blobs import BlobStore, BlobUnavailable, FileBlobs
from tests.conftest import jpeg_bytes, tiny_model
from tests.integration.kafka_helpers import committed

pytestmark = pytest.mark.integration


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg_bytes(seed))).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def kafka(broker: str, unique: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=broker, images_topic=f"img-{unique}", dlq_topic=f"dlq-{unique}", group=f"g-{unique}"
    )


def settings_for(kafka: KafkaSettings, blobs_url: str, **blob_settings: Any) -> Settings:
    return replace(Settings.from_env(), kafka=kafka, blobs=BlobSettings(url=blobs_url, **blob_settings))


def produce(kafka: KafkaSettings, messages: list[ImageMessage | DeleteMessage]) -> None:
    with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
        for m in messages:
            value = m.payload if isinstance(m, ImageMessage) else b""
            producer.send(kafka.images_topic, m.key(), value, m.headers())


@pytest.fixture
def extracted(
    kafka: KafkaSettings, sqlite_store: Store, tmp_path: Path
) -> Iterator[tuple[Settings, FileBlobs, dict[str, ImageMessage]]]:
    """An upload (bytes on Kafka) and a file reference, extracted by the real worker."""
    settings = settings_for(kafka, (tmp_path / "blobs").as_uri())
    blobs = stack.configured_blobs(settings)
    assert isinstance(blobs, FileBlobs)
    photo = tmp_path / "catalogue" / "p.png"
    photo.parent.mkdir()
    photo.write_bytes(png_bytes(2))
    listing = uuid.uuid4()
    sent = {
        "upload": ImageMessage(listing, uuid.uuid4(), "car", "image/jpeg", "upload", jpeg_bytes(1)),
        "reference": ImageMessage(
            listing, uuid.uuid4(), "car", URI_LIST, photo.as_uri(), photo.as_uri().encode()
        ),
    }
    produce(kafka, list(sent.values()))
    stack.run_extract(sqlite_store, tiny_model(), settings, drain=True)
    yield settings, blobs, sent


def api_client(store: Store, blobs: BlobStore | None) -> TestClient:
    model = tiny_model()
    service = SearchService(store, load_index(store, model.info, Settings.from_env().search), lambda: model)
    return TestClient(create_app(ApiSettings(), Components(service, blobs=blobs)))


def test_every_image_points_at_kept_pixels(
    extracted: tuple[Settings, FileBlobs, dict[str, ImageMessage]], sqlite_store: Store
) -> None:
    _, blobs, sent = extracted
    upload, reference = sent["upload"], sent["reference"]
    for m in (upload, reference):
        record = sqlite_store.image_record(m.image_id)
        assert record is not None and record.uri == blobs.uri(m.image_id), record
        assert blobs.path(m.image_id).is_file()
    assert blobs.get(blobs.uri(upload.image_id)) == upload.payload
    ref = sqlite_store.image_record(reference.image_id)
    assert ref is not None and ref.content_type == "image/png"  # read from the content, not text/uri-list

    with api_client(sqlite_store, blobs) as client:
        content = client.get(f"/v1/images/{upload.image_id}/content")
        assert content.status_code == 200 and content.content == upload.payload
        assert content.headers["content-type"] == "image/jpeg"
        thumb = client.get(f"/v1/images/{reference.image_id}/thumbnail", params={"size": 32})
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(thumb.content)).size) <= 32

        blobs.path(upload.image_id).unlink()  # pixels lost behind the API's back
        for what in ("content", "thumbnail"):
            gone = client.get(f"/v1/images/{upload.image_id}/{what}")
            assert gone.status_code == 404 and "are gone" in gone.json()["detail"], gone.text
        unknown = client.get(f"/v1/images/{uuid.uuid4()}/content")
        assert unknown.status_code == 404 and "not in the catalogue" in unknown.json()["detail"]


def test_a_removal_takes_the_pixels_too(
    extracted: tuple[Settings, FileBlobs, dict[str, ImageMessage]], sqlite_store: Store
) -> None:
    settings, blobs, sent = extracted
    upload, reference = sent["upload"], sent["reference"]
    produce(settings.kafka, [DeleteMessage(upload.listing_id, upload.image_id)])
    stack.run_extract(sqlite_store, tiny_model(), settings, drain=True)
    assert sqlite_store.image_record(upload.image_id) is None and not blobs.path(upload.image_id).exists()
    assert blobs.path(reference.image_id).exists()

    produce(settings.kafka, [DeleteMessage(upload.listing_id)])  # the whole listing
    stack.run_extract(sqlite_store, tiny_model(), settings, drain=True)
    assert sqlite_store.count("images") == 0 and not blobs.path(reference.image_id).exists()


class DownBlobs(FileBlobs):
    def put(self, image_id: uuid.UUID, data: bytes, content_type: str = "") -> str:
        raise BlobUnavailable("the object store does not answer (test)")


def test_unreachable_blob_store_stops_the_worker_with_nothing_committed(
    kafka: KafkaSettings, sqlite_store: Store, tmp_path: Path
) -> None:
    settings = settings_for(kafka, (tmp_path / "blobs").as_uri(), give_up_after_s=0.5)
    listing = uuid.uuid4()
    produce(kafka, [ImageMessage(listing, uuid.uuid4(), "car", "image/jpeg", "upload", jpeg_bytes(3))])
    down = DownBlobs((tmp_path / "blobs").as_uri())
    with pytest.raises(PipelineFailed, match="does not answer"):
        stack.run_extract(sqlite_store, tiny_model(), settings, drain=True, blobs=down)
    assert sqlite_store.count("images") == 0
    assert sum(committed(kafka).values()) == 0  # redelivered once the blob store is back

    stack.run_extract(sqlite_store, tiny_model(), settings, drain=True)  # back: the same message
    assert sqlite_store.count("images") == 1
    assert sum(committed(kafka).values()) == 1
