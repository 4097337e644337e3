"""The API and ``lookalike search`` on ``LOOKALIKE_SEARCH_ENGINE=spark`` against a real
``lookalike spark-serve`` (Spark ``local[2]``, the session's broker, one SQLite store): the
in-memory engine's answers for image id, listing id, vector and upload queries; 202 while the
service is not up yet, then the answer read back; an error notice as 422. One service for the
module (Spark's start is the slow part); the tests that need no service run before it starts."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.deps import Components
from config.cassandra import CassandraSettings
from config.settings import (
    ApiSettings,
    CoreSettings,
    ExtractSettings,
    KafkaSettings,
    ModelSettings,
    SearchSettings,
    Settings,
    SparkSettings,
)
from lookalike import stack
from lookalike.cli import app
from lookalike.demo_spark import log_path, spark_serve, tail
from schemas.records import ModelInfo
from search.service import SearchService
from search.spark.client import SparkSearchClient
from search.spark.remote import SparkSearch
from search.store_lookup import StoreLookup
from store.sqlite import SQLiteStore
from tests.conftest import jpeg_bytes, tiny_model
from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS, serving
from tests.integration.test_api import LISTINGS, seeded_service

pytestmark = pytest.mark.integration
FLOAT16_ROUNDING = 2e-3  # scores of float16 vectors, summed in another order
START_S = 300.0  # the service's start: a JVM, Spark, the vectors cached
OTHER = ModelInfo(name="not-stored", version="x", dim=32, dtype="float16", weights="random:x")


@dataclass
class World:
    """One store, its in-memory engine, topics of the module's own and (once started) the
    Spark search service over them."""

    memory: SearchService
    settings: Settings
    services: ExitStack = field(default_factory=ExitStack)
    started: bool = False

    @property
    def kafka(self) -> KafkaSettings:
        return self.settings.kafka

    def start(self) -> None:
        if not self.started:
            self.services.enter_context(spark_serve(self.settings, self.memory.index.model.name))
            self.started = True

    def spark_app(self, timeout_s: float = START_S, model: ModelInfo | None = None) -> FastAPI:
        """The API on the spark engine (``model``: the one it serves, the store's by default)."""
        store = self.memory.store
        service = SearchService(store, StoreLookup(store, model or self.memory.index.model), tiny_model)
        spark = SparkSearch(service, SparkSearchClient(self.kafka), timeout_s)
        return create_app(ApiSettings(), Components(service, spark=spark))

    def spark_api(self, timeout_s: float = START_S, model: ModelInfo | None = None) -> TestClient:
        return TestClient(self.spark_app(timeout_s, model))

    def memory_api(self) -> TestClient:
        return TestClient(create_app(ApiSettings(), Components(self.memory)))


@pytest.fixture(scope="module")
def world(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("spark-api")
    store = SQLiteStore(f"sqlite:///{folder / 'lookalike.db'}")
    store.apply_schema()
    tag = uuid.uuid4().hex[:8]  # the session's broker is shared
    kafka = KafkaSettings(
        bootstrap=broker, queries_topic=f"lookalike.queries.{tag}", answers_topic=f"lookalike.answers.{tag}"
    )
    settings = Settings(
        CoreSettings(data_dir=folder, store=store.url),
        kafka,
        ModelSettings(name="vgg16_fc7"),
        ExtractSettings(),
        SparkSettings(master="local[2]", driver_memory="1g", serve_metrics_port=0),
        SearchSettings(),
        ApiSettings(),
        CassandraSettings(),
    )
    w = World(seeded_service(store, folder), settings)
    try:
        yield w
    finally:
        w.services.close()
        store.close()


@pytest.fixture
def served(world: World) -> Iterator[tuple[TestClient, TestClient]]:
    """(the in-memory engine's API, the Spark engine's API) with the service started."""
    world.start()
    with world.memory_api() as mem, world.spark_api() as spark:
        yield mem, spark


def same_answer(a: dict[str, Any], b: dict[str, Any]) -> None:
    ra, rb = a["results"], b["results"]
    assert [r["listing_id"] for r in ra] == [r["listing_id"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert (x["listing_name"], x["inventory"]) == (y["listing_name"], y["inventory"])
        assert x["score"] == pytest.approx(y["score"], abs=FLOAT16_ROUNDING)
        assert [i["image_id"] for i in x["images"]] == [i["image_id"] for i in y["images"]]


def queries(memory: SearchService) -> list[dict[str, Any]]:
    listing = LISTINGS["listing-2"]
    image = memory.store.listing_images(listing)[0].image_id
    vector = memory.index.listing_vectors(LISTINGS["listing-4"])[1].tolist()
    return [
        {"image_id": str(image)},
        {"image_id": str(image), "k": 2, "in_stock_only": True},
        {"listing_id": str(listing), "aggregation": "mean_top_n", "top_n": 2},
        {"vector": vector},
        {"vector": vector, "k": 3, "min_score": 0.1, "aggregation": "count_above", "threshold": 0.5},
    ]


def poll(client: TestClient, path: str, deadline_s: float = START_S) -> Any:
    """GET ``path`` until it stops saying pending."""
    end = time.monotonic() + deadline_s
    while True:
        r = client.get(path)
        if r.status_code != 404 or "pending" not in r.text or time.monotonic() > end:
            return r
        time.sleep(0.2)


def ready_within(client: TestClient, deadline_s: float = 30.0) -> Any:
    """/readyz once it says ready (the answers reader assigns its partitions in the background)."""
    end = time.monotonic() + deadline_s
    while (r := client.get("/readyz")).status_code != 200 and time.monotonic() < end:
        time.sleep(0.1)
    return r.json()


# -- before the service starts ------------------------------------------------------------


def test_refusals_and_readiness_need_no_service(world: World) -> None:
    with world.spark_api(0.5) as spark:
        wrong = spark.post("/v1/search", json={"vector": [1.0] * 5})
        assert wrong.status_code == 422 and "32 values" in wrong.text
        assert spark.post("/v1/search", json={"image_id": str(uuid.uuid4())}).status_code == 404
        assert spark.post("/v1/search", json={"listing_id": str(uuid.uuid4())}).status_code == 404
        bad = spark.post("/v1/search/image", files={"image": ("a.jpg", b"not an image", "image/jpeg")})
        assert bad.status_code == 422 and "not a usable image" in bad.text
        ready = ready_within(spark)
        assert ready["ready"], ready
        assert ready["checks"]["engine"] == f"spark: answers reader following {world.kafka.answers_topic}"
        assert spark.get(f"/v1/search/{uuid.uuid4()}").json()["detail"].endswith("(unknown or expired)")


def test_the_spark_engine_loads_no_index(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lookalike serve``'s components on engine spark: the store's model, no vector in memory,
    the answers reader; no broker configured is a clear error."""
    monkeypatch.setenv("LOOKALIKE_STORE", world.memory.store.url)
    monkeypatch.setenv("LOOKALIKE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LOOKALIKE_MODEL_NAME", world.memory.index.model.name)
    monkeypatch.setenv("LOOKALIKE_SEARCH_ENGINE", "spark")
    with pytest.raises(ValueError, match="needs LOOKALIKE_KAFKA_BOOTSTRAP"):
        stack.api_components(Settings.from_env())
    monkeypatch.setenv("LOOKALIKE_KAFKA_BOOTSTRAP", world.kafka.bootstrap)
    monkeypatch.setenv("LOOKALIKE_KAFKA_ANSWERS_TOPIC", world.kafka.answers_topic)
    components = stack.api_components(Settings.from_env())
    try:
        assert components.spark is not None and components.service is components.spark.service
        assert isinstance(components.service.index, StoreLookup) and len(components.service.index) == 0
        assert components.service.index.model == world.memory.index.model
    finally:
        assert components.spark is not None and components.ingest is not None
        components.spark.client.close()
        components.ingest.producer.close()


def test_202_before_the_service_is_up_then_the_answer(world: World) -> None:
    """Past the wait: 202, GET says pending, then answers once the service started; a query
    the service refuses reads back as 422."""
    assert not world.started, "the service must not be up yet: run this module in its order"
    body = {"listing_id": str(LISTINGS["listing-1"]), "k": 3}
    with world.spark_api(0.5) as spark, world.spark_api(0.5, OTHER) as other:
        r = spark.post("/v1/search", json=body)
        assert r.status_code == 202, r.text
        query_id = r.json()["query_id"]
        assert r.json() == {"query_id": query_id, "status": "pending"}
        assert r.headers["location"] == f"/v1/search/{query_id}"
        early = spark.get(r.headers["location"])
        assert early.status_code == 404 and "pending" in early.text
        refused = other.post("/v1/search", json={"vector": [1.0] * 32})
        assert refused.status_code == 202, refused.text
        world.start()
        late = poll(spark, r.headers["location"])
        assert late.status_code == 200, late.text + tail(log_path(world.settings))
        assert late.json()["query_id"] == query_id
        late_refusal = poll(other, refused.headers["location"])
        assert late_refusal.status_code == 422 and "not-stored" in late_refusal.text, late_refusal.text
    with world.memory_api() as mem:
        same_answer(mem.post("/v1/search", json=body).json(), late.json())


# -- the service up -----------------------------------------------------------------------


def test_spark_answers_as_the_memory_engine(served: tuple[TestClient, TestClient], world: World) -> None:
    mem, spark = served
    for body in queries(world.memory):
        a, b = mem.post("/v1/search", json=body), spark.post("/v1/search", json=body)
        assert (a.status_code, b.status_code) == (200, 200), (body, b.text)
        same_answer(a.json(), b.json())
        assert b.json()["results"], body
    upload = {"image": ("q.jpg", jpeg_bytes(20), "image/jpeg")}
    a, b = mem.post("/v1/search/image", files=upload), spark.post("/v1/search/image", files=upload)
    assert (a.status_code, b.status_code) == (200, 200), b.text
    same_answer(a.json(), b.json())
    assert b.json()["results"][0]["listing_name"] == "listing-2"
    back = spark.get(f"/v1/search/{b.json()['query_id']}")
    assert back.status_code == 200 and back.json() == b.json()


def test_an_error_notice_is_a_422(served: tuple[TestClient, TestClient], world: World) -> None:
    """An API serving a model the service does not serve: the service says so, 422."""
    with world.spark_api(START_S, OTHER) as spark:
        r = spark.post("/v1/search", json={"vector": [1.0] * 32})
    assert r.status_code == 422 and "not-stored" in r.text, r.text


def test_lookalike_search_uses_the_engine_setting(
    served: tuple[TestClient, TestClient], world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = world.memory
    monkeypatch.setenv("LOOKALIKE_STORE", memory.store.url)
    monkeypatch.setenv("LOOKALIKE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LOOKALIKE_MODEL_NAME", memory.index.model.name)
    monkeypatch.setenv("LOOKALIKE_KAFKA_BOOTSTRAP", world.kafka.bootstrap)
    monkeypatch.setenv("LOOKALIKE_KAFKA_QUERIES_TOPIC", world.kafka.queries_topic)
    monkeypatch.setenv("LOOKALIKE_KAFKA_ANSWERS_TOPIC", world.kafka.answers_topic)
    monkeypatch.setenv("LOOKALIKE_SEARCH_FOLLOW", "off")  # the memory engine's index: no follower left
    monkeypatch.setenv("LOOKALIKE_SEARCH_SPARK_TIMEOUT_S", str(START_S))
    image = memory.store.listing_images(LISTINGS["listing-3"])[0].image_id
    rows = np.stack([memory.index.listing_vectors(LISTINGS[n])[0] for n in ("listing-0", "listing-4")])
    np.save(tmp_path / "q.npy", rows)
    asks = [["--image-id", str(image), "--k", "3"], ["--vector", str(tmp_path / "q.npy"), "--in-stock-only"]]
    found = {}
    for engine in ("memory", "spark"):
        monkeypatch.setenv("LOOKALIKE_SEARCH_ENGINE", engine)
        for n, ask in enumerate(asks):
            result = CliRunner().invoke(app, ["search", *ask, "--json"])
            assert result.exit_code == 0, result.output
            found[engine, n] = json.loads(result.stdout)
    same_answer(found["memory", 0], found["spark", 0])
    assert len(found["spark", 1]) == 2
    for a, b in zip(found["memory", 1], found["spark", 1], strict=True):
        same_answer(a, b)


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs it as root)")
def test_the_page_reads_a_pending_answer(
    served: tuple[TestClient, TestClient], world: World, tmp_path: Path
) -> None:
    """The page on an API whose wait is shorter than a pass of the service: the 202's answer
    is read from its Location and shown as any other."""
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "query.jpg"
    photo.write_bytes(jpeg_bytes(20))
    with serving(world.spark_app(0.001)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(url)
            page.wait_for_selector("#model option", state="attached", timeout=30_000)
            page.set_input_files("#file", str(photo))
            page.wait_for_selector(".card", timeout=120_000)
            assert page.locator(".card h2").all_inner_texts()[0] == "1. listing-2"
        finally:
            browser.close()
