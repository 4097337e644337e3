"""The API on ``LOOKALIKE_SEARCH_ENGINE=spark`` against a real ``lookalike spark-serve`` (Spark
``local[2]``, the session's broker, one SQLite store): the in-memory engine's answers for image
id, listing id, vector and upload queries; 202 while the service is not up yet, then the answer
read back; an error notice as 422. One service for the module (Spark's start is the slow part)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient

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
from lookalike import cli
from lookalike.demo_spark import log_path, spark_serve, tail
from schemas.records import ModelInfo
from search.service import SearchService
from store.sqlite import SQLiteStore
from tests.conftest import jpeg_bytes
from tests.integration.test_api import LISTINGS, seeded_service
from tests.integration.test_spark_api import poll, queries, ready_within, same_answer, spark_client

pytestmark = pytest.mark.integration
if "spark-serve" not in {c.name for c in cli.app.registered_commands}:
    pytest.skip("no `lookalike spark-serve` command in this tree", allow_module_level=True)
START_S = 300.0  # the service's start: a JVM, Spark, the vectors read


@dataclass
class World:
    memory: SearchService
    settings: Settings
    stack: ExitStack = field(default_factory=ExitStack)
    started: bool = False

    @property
    def kafka(self) -> KafkaSettings:
        return self.settings.kafka

    def start(self) -> None:
        if not self.started:
            self.stack.enter_context(spark_serve(self.settings, self.memory.index.model.name))
            self.started = True


@pytest.fixture(scope="module")
def world(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("spark-serve-api")
    store = SQLiteStore(f"sqlite:///{folder / 'lookalike.db'}")
    store.apply_schema()
    tag = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap=broker, queries_topic=f"lookalike.queries.{tag}", answers_topic=f"lookalike.answers.{tag}"
    )
    settings = Settings(
        CoreSettings(data_dir=folder, store=store.url),
        kafka,
        ModelSettings(name="vgg16_fc7"),
        ExtractSettings(),
        SparkSettings(master="local[2]", driver_memory="1g"),
        SearchSettings(),
        ApiSettings(),
        CassandraSettings(),
    )
    w = World(seeded_service(store, folder), settings)
    try:
        yield w
    finally:
        w.stack.close()
        store.close()


@pytest.fixture
def serving(world: World) -> Iterator[tuple[TestClient, TestClient]]:
    """(the in-memory engine's API, the Spark engine's API) once the service answers."""
    world.start()
    with ExitStack() as stack:
        mem = stack.enter_context(TestClient(create_app(ApiSettings(), Components(world.memory))))
        spark = stack.enter_context(
            spark_client(world.memory.store, world.kafka, START_S, world.memory.index.model)
        )
        yield mem, spark


def test_202_before_the_service_is_up_then_the_answer(world: World) -> None:
    """(First in the module: the service is not started yet.)"""
    assert not world.started
    body = {"listing_id": str(LISTINGS["listing-1"]), "k": 3}
    with spark_client(world.memory.store, world.kafka, 0.5, world.memory.index.model) as spark:
        r = spark.post("/v1/search", json=body)
        assert r.status_code == 202, r.text
        assert r.json() == {"query_id": r.json()["query_id"], "status": "pending"}
        assert spark.get(r.headers["location"]).status_code == 404
        world.start()
        late = poll(spark, r.headers["location"], START_S)
    assert late.status_code == 200, late.text + tail(log_path(world.settings))
    with TestClient(create_app(ApiSettings(), Components(world.memory))) as mem:
        same_answer(mem.post("/v1/search", json=body).json(), late.json())


def test_spark_serve_answers_as_the_memory_engine(
    serving: tuple[TestClient, TestClient], world: World
) -> None:
    mem, spark = serving
    for body in queries(world.memory):
        a, b = mem.post("/v1/search", json=body), spark.post("/v1/search", json=body)
        assert (a.status_code, b.status_code) == (200, 200), (body, b.text)
        same_answer(a.json(), b.json())
    upload = {"image": ("q.jpg", jpeg_bytes(20), "image/jpeg")}
    a, b = mem.post("/v1/search/image", files=upload), spark.post("/v1/search/image", files=upload)
    assert (a.status_code, b.status_code) == (200, 200), b.text
    same_answer(a.json(), b.json())
    assert ready_within(spark)["ready"]


def test_an_error_notice_is_a_422(serving: tuple[TestClient, TestClient], world: World) -> None:
    """An API serving a model the service does not know: the service says so, 422."""
    other = ModelInfo(name="not-stored", version="x", dim=32, dtype="float16", weights="random:x")
    with spark_client(world.memory.store, world.kafka, START_S, other) as spark:
        r = spark.post("/v1/search", json={"vector": [1.0] * 32})
    assert r.status_code == 422 and "not-stored" in r.text, r.text
