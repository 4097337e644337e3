"""A search replica started before its topic exists, or while its broker is down, follows the
topic once it is there: its index follower and the workers wait (``/readyz`` says for what)
instead of giving up, and a photo uploaded then is found within seconds, without a restart."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from config.settings import ApiSettings, BlobSettings, KafkaSettings, SearchSettings, Settings
from lookalike import stack
from messaging.broker import EmbeddedBroker, free_port
from search.loader import load_index
from search.service import SearchService
from store import Store
from tests.conftest import jpeg_bytes, tiny_model
from tests.integration.test_api import seeded_service

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "k"}
FOUND_WITHIN_S = 90  # a deadline on a busy machine, not a speed goal (the test prints the time)


def kafka_for(bootstrap: str, unique: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=bootstrap,
        images_topic=f"img-{unique}",
        stock_topic=f"stock-{unique}",
        dlq_topic=f"dlq-{unique}",
        group=f"g-{unique}",
    )


@contextmanager
def live_api(store: Store, tmp_path: Path, kafka: KafkaSettings) -> Iterator[tuple[TestClient, Settings]]:
    """The API with an index that follows the images topic (which does not exist yet)."""
    settings = replace(
        Settings.from_env(), kafka=kafka, blobs=BlobSettings(url=(tmp_path / "blobs").as_uri())
    )
    seeded = seeded_service(store, tmp_path)  # the catalogue; its index does not follow
    model = tiny_model()
    search = SearchSettings(follow="stream", follow_interval_s=0.1)
    index = load_index(store, model.info, search, kafka)
    service = SearchService(store, index, lambda: model, seeded.max_pixels)
    app = create_app(ApiSettings(keys=[SecretStr("k")]), stack.api_components(settings, service))
    try:
        with TestClient(app) as client:
            yield client, settings
    finally:
        index.follower.stop()
        index.follower.source.close()


@contextmanager
def live_workers(store: Store, settings: Settings) -> Iterator[None]:
    """The extract worker and the stock follower on threads, as the demo runs them; they
    create their topics once the broker answers."""
    loops = stack.start_live_workers(store, tiny_model(), settings)
    try:
        yield
    finally:
        loops.close()


def checks(client: TestClient) -> dict[str, Any]:
    found: dict[str, Any] = client.get("/readyz").json()["checks"]
    return found


def wait_for(what: str, condition: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def upload_then_find(client: TestClient, seed: int) -> float:
    """Upload a photo (retrying the 503s of a producer still connecting), then search by its
    id until the index has it; seconds from the 202 to found."""
    files = {"image": ("p.jpg", jpeg_bytes(seed), "image/jpeg")}
    deadline = time.monotonic() + FOUND_WITHIN_S
    while (
        r := client.post("/v1/images", files=files, data={"listing": "new"}, headers=KEY)
    ).status_code == 503:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)
    assert r.status_code == 202, r.text
    image, accepted = r.json()["image_id"], time.monotonic()
    while (found := client.post("/v1/search", json={"image_id": image})).status_code == 404:
        assert time.monotonic() - accepted < FOUND_WITHIN_S, f"upload {image} never became searchable"
        time.sleep(0.1)
    assert found.status_code == 200, found.text
    return time.monotonic() - accepted


def test_a_replica_started_before_its_topic_exists_finds_a_new_upload(
    broker: str, sqlite_store: Store, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = kafka_for(broker, unique)
    caplog.set_level(logging.INFO, logger="messaging.tail")
    with live_api(sqlite_store, tmp_path, kafka) as (client, settings):
        waiting = f"waiting for topic {kafka.images_topic} (nothing published to it yet)"
        wait_for("the follower to wait for its topic", lambda: checks(client)["follower"] == waiting)
        assert f"waiting for topic {kafka.images_topic} to exist" in caplog.text
        assert client.get("/readyz").status_code == 200  # nothing can be missed: it is read from its start
        with live_workers(sqlite_store, settings):  # they create the topics
            wait_for(
                "the follower to follow",
                lambda: checks(client)["follower"] == f"following {kafka.images_topic}",
            )
            took = upload_then_find(client, 1)
    print(f"topic created after the replica started: upload found {took:.2f}s after its 202")


def test_a_replica_started_while_its_broker_is_down_finds_a_new_upload(
    sqlite_store: Store, tmp_path: Path, unique: str
) -> None:
    port = free_port()
    kafka = kafka_for(f"127.0.0.1:{port}", unique)
    with live_api(sqlite_store, tmp_path, kafka) as (client, settings), live_workers(sqlite_store, settings):
        wait_for(
            "the follower to wait", lambda: checks(client)["follower"].startswith("waiting for the broker")
        )
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("unavailable")
        broker = EmbeddedBroker(port=port).start()  # the broker comes up at the same address
        try:
            took = upload_then_find(client, 2)
            wait_for("readiness", lambda: client.get("/readyz").status_code == 200)
            assert checks(client)["follower"] == f"following {kafka.images_topic}"
        finally:
            broker.stop()
    print(f"broker up after the replica started: upload found {took:.2f}s after its 202")


def test_a_worker_waiting_for_its_broker_stops_on_request(
    sqlite_store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Waiting is never a hang: a worker waiting for a broker that is not there says so, and
    stops when asked."""
    caplog.set_level(logging.WARNING, logger="messaging.admin")
    kafka = kafka_for(f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:8])
    settings = replace(Settings.from_env(), kafka=kafka, blobs=BlobSettings(url=(tmp_path / "b").as_uri()))
    stop = threading.Event()
    done: list[Any] = []
    worker = threading.Thread(
        target=lambda: done.append(stack.run_extract(sqlite_store, tiny_model(), settings, stop=stop))
    )
    worker.start()
    wait_for("the worker to say it waits", lambda: "waiting for the broker at" in caplog.text)
    stop.set()
    worker.join(30)
    assert not worker.is_alive() and done and done[0][0].messages == 0
