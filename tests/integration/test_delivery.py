"""A 202 means kept: every write the API acknowledges (an upload, a removal, a stock level) is
in the ingest outbox before the 202 and leaves it once a worker stored it; a refused one (4xx,
503, a stop under way) leaves nothing, and is not delivered later either; what a broker lost
comes back from the outbox, in the order it was accepted, so a removed upload stays removed.

The broker's loss is real: a private embedded broker (memory-only) is stopped and a new one
started on the same port, empty, as after a demo killed with SIGKILL."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from config.settings import ApiSettings, BlobSettings, KafkaSettings, Settings
from ingest.replay import replay
from lookalike import stack
from messaging.admin import ensure_topics
from messaging.broker import EmbeddedBroker, free_port
from messaging.producer import KafkaProducer
from schemas import ids
from schemas.codec import l2_normalise
from schemas.messages import ImageMessage, outbox_name
from schemas.records import Extracted, ImageRecord
from store import Store
from store.blobs import FileBlobs
from store.outbox import Outbox
from tests.conftest import jpeg_bytes, tiny_model
from tests.integration.test_api import seeded_service

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "k"}
LISTING = "red car"


def settings_for(kafka: KafkaSettings, tmp_path: Path) -> Settings:
    return replace(Settings.from_env(), kafka=kafka, blobs=BlobSettings(url=(tmp_path / "blobs").as_uri()))


@contextmanager
def api(settings: Settings, store: Store, tmp_path: Path) -> Iterator[tuple[TestClient, Outbox]]:
    """The API as ``lookalike serve`` builds it (outbox on), over a seeded catalogue."""
    components = stack.api_components(settings, seeded_service(store, tmp_path))
    assert components.blobs is not None
    with TestClient(create_app(ApiSettings(keys=[SecretStr("k")]), components)) as client:
        yield client, Outbox(components.blobs)


def upload(client: TestClient, seed: int, listing: str = LISTING) -> tuple[int, dict[str, str]]:
    files = {"image": ("p.jpg", jpeg_bytes(seed), "image/jpeg")}
    r = client.post("/v1/images", files=files, data={"listing": listing}, headers=KEY)
    return r.status_code, r.json() | {"retry-after": r.headers.get("retry-after", "")}


def image_id(seed: int, listing: str = LISTING) -> uuid.UUID:
    """The id the API gives the upload of ``jpeg_bytes(seed)``."""
    return ids.image_id(listing, hashlib.sha256(jpeg_bytes(seed)).hexdigest())


def read_all(bootstrap: str, topic: str, partitions: int, until: uuid.UUID) -> list[ImageMessage]:
    """Every image message of ``topic`` from the start, up to the one of image ``until``."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex[:6]}"})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen: list[ImageMessage] = []
    deadline = time.monotonic() + 60
    try:
        while until not in {m.image_id for m in seen}:
            assert time.monotonic() < deadline, f"image {until} never reached {topic}: {seen}"
            seen += [
                ImageMessage.from_kafka(x.headers(), x.value()) for x in c.consume(10, 0.2) if not x.error()
            ]
    finally:
        c.close()
    return seen


def test_a_202_is_kept_until_a_worker_stores_it(
    broker: str, sqlite_store: Store, tmp_path: Path, unique: str
) -> None:
    kafka = KafkaSettings(
        bootstrap=broker, images_topic=f"img-{unique}", stock_topic=f"stock-{unique}", group=f"g-{unique}"
    )
    settings = settings_for(kafka, tmp_path)
    ensure_topics(kafka.client_config(), [kafka.images_topic, kafka.stock_topic], kafka.partitions)
    with api(settings, sqlite_store, tmp_path) as (client, outbox):
        status, accepted = upload(client, 1)
        assert status == 202, accepted
        assert (
            client.post("/v1/stock", json={"listing": LISTING, "inventory": 3}, headers=KEY).status_code
            == 202
        )
        kept = list(outbox.pending())
        assert [e.topic for e in kept] == [kafka.images_topic, kafka.stock_topic]
        image = ImageMessage.from_kafka(kept[0].headers, kept[0].value)
        assert str(image.image_id) == accepted["image_id"] and image.payload == jpeg_bytes(1)

    (message,) = read_all(broker, kafka.images_topic, kafka.partitions, image.image_id)
    stack.run_extract(sqlite_store, tiny_model(), settings, drain=True)
    assert sqlite_store.existing_images([image.image_id], "vgg16_fc7") == {image.image_id}
    assert [e.topic for e in outbox.pending()] == [kafka.stock_topic]  # stored: its record went
    stack.run_stock_sync(sqlite_store, kafka, drain=True, blobs=stack.configured_blobs(settings))
    assert outbox.names() == []
    assert sqlite_store.get_stock([ids.listing_id(LISTING)])[ids.listing_id(LISTING)].inventory == 3
    assert message.payload == jpeg_bytes(1)


def test_refused_writes_leave_nothing_and_are_never_delivered_later(
    sqlite_store: Store, tmp_path: Path, unique: str
) -> None:
    port = free_port()  # nothing listens there yet: the broker is down
    kafka = KafkaSettings(bootstrap=f"127.0.0.1:{port}", images_topic=f"img-{unique}", delivery_timeout_s=2)
    settings = settings_for(kafka, tmp_path)
    with api(settings, sqlite_store, tmp_path) as (client, outbox):
        status, refused = upload(client, 1)
        assert status == 503 and refused["retry-after"], refused
        bad = client.post(
            "/v1/images",
            files={"image": ("x.jpg", b"GIF89a no", "image/gif")},
            data={"listing": "x"},
            headers=KEY,
        )
        assert bad.status_code == 422
        assert outbox.names() == []

        with EmbeddedBroker(port=port):  # the broker comes up: what was refused must stay refused
            ensure_topics(kafka.client_config(), [kafka.images_topic], kafka.partitions)
            answers = {1: 503}
            seed = 2
            while 202 not in answers.values():  # the producer reconnects with backoff: 503 meanwhile
                assert seed < 40, answers
                answers[seed] = upload(client, seed)[0]
                seed += 1
            assert set(answers.values()) == {202, 503}, answers
            accepted = {image_id(s) for s, status in answers.items() if status == 202}
            assert len(outbox.names()) == len(accepted)  # kept until a worker stores them
            # one listing, so one partition, read in order up to the last upload: a refused upload
            # delivered late (after its 503) would be there before it
            last = image_id(max(answers))
            on_topic = {
                m.image_id for m in read_all(kafka.bootstrap, kafka.images_topic, kafka.partitions, last)
            }
            assert on_topic == accepted

            gate = client.app.state.components.ingest.gate  # type: ignore[attr-defined]
            assert gate.close(timeout_s=5) == 0  # what a graceful stop does first
            status, draining = upload(client, 99)
            assert status == 503 and draining["retry-after"] and "stopping" in draining["detail"]
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["ingest"].startswith("draining")
            assert client.get("/healthz").status_code == 200  # reads go on
            assert len(outbox.names()) == len(accepted)


def test_what_a_broker_lost_comes_back_from_the_outbox_in_order(
    sqlite_store: Store, tmp_path: Path, unique: str
) -> None:
    """Upload X, remove the listing, upload Y, set the stock; the broker loses it all before
    any worker ran. The replay stores the listing as the writes left it: Y only, stock 7."""
    listing = ids.listing_id(LISTING)
    model = tiny_model()
    sqlite_store.put_model(model.info)
    earlier = ImageRecord(listing, uuid.uuid4(), "test://", "image/jpeg", 1, 1, 1)
    vector = l2_normalise(np.random.default_rng(0).normal(size=model.info.dim))
    sqlite_store.write_extracted([Extracted(earlier, LISTING, model.info.name, vector)], "float16")
    port = free_port()
    kafka = KafkaSettings(
        bootstrap=f"127.0.0.1:{port}",
        images_topic=f"img-{unique}",
        stock_topic=f"stock-{unique}",
        group=f"g-{unique}",
    )
    settings = settings_for(kafka, tmp_path)
    with EmbeddedBroker(port=port):
        ensure_topics(kafka.client_config(), [kafka.images_topic, kafka.stock_topic], kafka.partitions)
        with api(settings, sqlite_store, tmp_path) as (client, outbox):
            status, x = upload(client, 1)
            assert status == 202, x
            assert client.delete(f"/v1/listings/{listing}", headers=KEY).status_code == 202
            status, y = upload(client, 2)
            assert status == 202, y
            assert (
                client.post("/v1/stock", json={"listing": LISTING, "inventory": 7}, headers=KEY).status_code
                == 202
            )
    assert len(outbox.names()) == 4  # the broker stops with all of it: nothing was stored

    with EmbeddedBroker(port=port):  # the same address, empty: what a restarted demo finds
        ensure_topics(kafka.client_config(), [kafka.images_topic, kafka.stock_topic], kafka.partitions)
        stray = outbox.keep(f"elsewhere-{unique}", b"k", b"v", [])  # another stack's: not ours to send
        with KafkaProducer(kafka.client_config(), kafka.max_message_bytes) as producer:
            sent = replay(outbox, producer, topics={kafka.images_topic, kafka.stock_topic})
        assert sent == {kafka.images_topic: 3, kafka.stock_topic: 1}
        stack.run_extract(sqlite_store, model, settings, drain=True)
        stack.run_stock_sync(sqlite_store, kafka, drain=True, blobs=stack.configured_blobs(settings))

    images = {r.image_id for r in sqlite_store.listing_images(listing)}
    assert images == {uuid.UUID(y["image_id"])}, "the removal took the earlier image and X, not Y"
    assert sqlite_store.get_stock([listing])[listing].inventory == 7
    assert outbox.names() == [stray.name]


def test_lookalike_ingest_replay_produces_the_outbox_again(broker: str, tmp_path: Path, unique: str) -> None:
    """The command for a production broker that lost data: what is waiting goes out again, and
    stays in the outbox until a worker stores it."""
    outbox = Outbox(FileBlobs((tmp_path / "blobs").as_uri()))
    kept = outbox.keep(f"stock-{unique}", b"k", b'{"inventory": 1}', [])
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env |= {
        "LOOKALIKE_KAFKA_BOOTSTRAP": broker,
        "LOOKALIKE_BLOBS_URL": (tmp_path / "blobs").as_uri(),
        "COLUMNS": "200",
    }
    lookalike = str(Path(sys.executable).parent / "lookalike")
    done = subprocess.run(
        [lookalike, "ingest", "replay"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert f"outbox replayed: 1 to stock-{unique}" in done.stdout
    c = Consumer({"bootstrap.servers": broker, "group.id": f"read-{unique}", "auto.offset.reset": "earliest"})
    c.subscribe([f"stock-{unique}"])
    try:
        deadline, got = time.monotonic() + 60, list[Any]()
        while not got:
            assert time.monotonic() < deadline, "the replayed record never reached the topic"
            got = [m for m in c.consume(1, 0.5) if not m.error()]
    finally:
        c.close()
    assert got[0].value() == b'{"inventory": 1}' and outbox_name(got[0].headers()) == kept.name
    assert outbox.names() == [kept.name]  # cleared by the worker that stores it, not by the replay
