"""Models side by side: extract with one model, re-embed every image from its kept pixels with
another through the real broker and workers, list both, and refuse what must be refused."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.deps import Components
from config.settings import ApiSettings, BlobSettings, KafkaSettings, Settings
from lookalike import stack
from lookalike.cli import app
from lookalike.models_cli import Throttle, reembed
from messaging.producer import KafkaProducer
from schemas.messages import ImageMessage, model_topic
from search.loader import load_index
from search.service import SearchService
from store import Store, StoreError
from store.models import list_models
from tests.conftest import jpeg_bytes, tiny_model

pytestmark = pytest.mark.integration
IMAGES = 6


def test_reembed_backfills_a_second_model_from_kept_pixels(
    broker: str, unique: str, sqlite_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = KafkaSettings(
        bootstrap=broker, images_topic=f"img-{unique}", dlq_topic=f"dlq-{unique}", group=f"g-{unique}"
    )
    settings = replace(
        Settings.from_env(), kafka=kafka, blobs=BlobSettings(url=(tmp_path / "blobs").as_uri())
    )
    first, second = tiny_model(32, "vgg16_fc7"), tiny_model(16, "resnet50_pool")
    with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
        for i in range(IMAGES):  # uploads: their bytes exist only on Kafka until kept
            m = ImageMessage(uuid.uuid4(), uuid.uuid4(), f"l{i}", "image/jpeg", "upload", jpeg_bytes(i))
            producer.send(kafka.images_topic, m.key(), m.payload, m.headers())
    stack.run_extract(sqlite_store, first, settings, drain=True)
    assert [(m.info.name, m.vectors, m.images) for m in list_models(sqlite_store)] == [
        ("vgg16_fc7", IMAGES, IMAGES)
    ]

    blobs = stack.configured_blobs(settings)
    with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
        report = reembed(sqlite_store, producer, kafka.images_topic, second.info, blobs, batch_size=4)
    assert (report.images, report.produced, report.present, report.unkept) == (IMAGES, IMAGES, 0, 0)
    assert report.topic == model_topic(kafka.images_topic, "resnet50_pool")
    assert {m.info.name: m.vectors for m in list_models(sqlite_store)} == {
        "resnet50_pool": 0,
        "vgg16_fc7": IMAGES,
    }

    # The first model's workers never see the backfill (it is on the second model's topic).
    stack.run_extract(sqlite_store, first, settings, drain=True)
    assert sqlite_store.count_features(second.info) == 0
    # The second model's workers (the same settings: a group of their own) embed it from the
    # kept pixels, and every upload that arrives from now on too.
    stack.run_extract(sqlite_store, second, settings, drain=True)
    coverage = {m.info.name: (m.vectors, m.coverage) for m in list_models(sqlite_store)}
    assert coverage == {"resnet50_pool": (IMAGES, 1.0), "vgg16_fc7": (IMAGES, 1.0)}
    assert sqlite_store.count("images") == IMAGES  # the same images, now with two vectors each
    fresh = ImageMessage(uuid.uuid4(), uuid.uuid4(), "fresh", "image/jpeg", "upload", jpeg_bytes(99))
    with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
        producer.send(kafka.images_topic, fresh.key(), fresh.payload, fresh.headers())
    for model in (first, second):
        stack.run_extract(sqlite_store, model, settings, drain=True)
    assert {m.info.name: m.coverage for m in list_models(sqlite_store)} == {
        "resnet50_pool": 1.0,
        "vgg16_fc7": 1.0,
    }
    assert sqlite_store.count("images") == IMAGES + 1

    # Resumable and idempotent: nothing is left to produce.
    with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
        again = reembed(sqlite_store, producer, kafka.images_topic, second.info, blobs)
    assert (again.produced, again.present) == (0, IMAGES + 1)

    # Other weights under a stored name are refused, with the reason, before producing anything.
    other = replace(second.info, weights="sha256:" + "0" * 64)
    with (
        KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer,
        pytest.raises(StoreError, match="made by random"),
    ):
        reembed(sqlite_store, producer, kafka.images_topic, other, blobs)

    # The command line lists both; an unknown model is a usage error.
    monkeypatch.setenv("LOOKALIKE_STORE", sqlite_store.url)
    monkeypatch.setenv("LOOKALIKE_MODEL_NAME", "vgg16_fc7")
    listed = CliRunner().invoke(app, ["models", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["resnet50_pool"]["dim"] == 16 and rows["resnet50_pool"]["coverage"] == 1.0
    assert rows["vgg16_fc7"]["served"] and not rows["resnet50_pool"]["served"]
    assert rows["vgg16_fc7"]["weights"] == first.info.weights
    bad = CliRunner().invoke(app, ["reembed", "--model", "no_such_net"])
    assert bad.exit_code == 2 and "unknown model 'no_such_net'" in bad.output

    # The API serves one model's index; it lists all and refuses searches for the others.
    service = SearchService(
        sqlite_store, load_index(sqlite_store, first.info, settings.search), lambda: first
    )
    image = next(iter(next(sqlite_store.scan_images(1)))).image_id
    with TestClient(create_app(ApiSettings(), Components(service, blobs=blobs))) as client:
        models = client.get("/v1/models").json()
        assert {m["name"]: m["served"] for m in models} == {"resnet50_pool": False, "vgg16_fc7": True}
        ok = client.post("/v1/search", json={"image_id": str(image), "model": "vgg16_fc7"})
        assert ok.status_code == 200, ok.text
        other_model = client.post("/v1/search", json={"image_id": str(image), "model": "resnet50_pool"})
        assert other_model.status_code == 409 and "LOOKALIKE_MODEL_NAME=resnet50_pool" in other_model.text
        unknown = client.post("/v1/search", json={"image_id": str(image), "model": "nope"})
        assert unknown.status_code == 404 and "no vectors of model 'nope'" in unknown.text
        assert client.get(f"/v1/images/{image}/content").status_code == 200  # an upload's pixels


def test_throttle_spaces_events_out() -> None:
    slept: list[float] = []
    throttle = Throttle(10, sleep=slept.append)
    for _ in range(25):
        throttle.take()
    assert len(slept) >= 10  # past the one-second burst, it waits
    unlimited = Throttle(0, sleep=slept.append)
    before = len(slept)
    for _ in range(100):
        unlimited.take()
    assert len(slept) == before
