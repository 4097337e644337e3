"""The API on ``LOOKALIKE_SEARCH_ENGINE=spark``: the same answers as the in-memory engine on the
same store, 202 past the wait and the answer read back later, an error notice as 422."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.deps import Components
from config.settings import ApiSettings, KafkaSettings, Settings
from lookalike import stack
from lookalike.cli import app
from schemas.records import ModelInfo
from search.service import SearchService
from search.spark.client import SparkSearchClient
from search.spark.remote import SparkSearch
from search.store_lookup import StoreLookup
from store import Store
from tests.conftest import jpeg_bytes, tiny_model
from tests.integration.spark_standin import StandIn
from tests.integration.test_api import LISTINGS, seeded_service

pytestmark = pytest.mark.integration
FLOAT16_ROUNDING = 2e-3  # scores of float16 vectors, summed in another order


@pytest.fixture
def kafka(broker: str) -> KafkaSettings:
    """Topics of this test's own (the session's broker is shared)."""
    tag = uuid.uuid4().hex[:8]
    return KafkaSettings(
        bootstrap=broker, queries_topic=f"lookalike.queries.{tag}", answers_topic=f"lookalike.answers.{tag}"
    )


@pytest.fixture
def memory(sqlite_store: Store, tmp_path: Path) -> SearchService:
    return seeded_service(sqlite_store, tmp_path)


def spark_client(store: Store, kafka: KafkaSettings, timeout_s: float, model: ModelInfo) -> TestClient:
    service = SearchService(store, StoreLookup(store, model), tiny_model)
    spark = SparkSearch(service, SparkSearchClient(kafka), timeout_s)
    return TestClient(create_app(ApiSettings(), Components(service, spark=spark)))


@pytest.fixture
def clients(memory: SearchService, kafka: KafkaSettings) -> Iterator[tuple[TestClient, TestClient]]:
    """(the in-memory engine's API, the Spark engine's API) over the same store."""
    with ExitStack() as stack:
        stack.enter_context(StandIn(kafka, memory))
        mem = stack.enter_context(TestClient(create_app(ApiSettings(), Components(memory))))
        spark = stack.enter_context(spark_client(memory.store, kafka, 60.0, memory.index.model))
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


def test_spark_answers_as_the_memory_engine(
    clients: tuple[TestClient, TestClient], memory: SearchService
) -> None:
    mem, spark = clients
    for body in queries(memory):
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


def test_spark_engine_refuses_what_memory_refuses(clients: tuple[TestClient, TestClient]) -> None:
    _, spark = clients
    wrong = spark.post("/v1/search", json={"vector": [1.0] * 5})
    assert wrong.status_code == 422 and "32 values" in wrong.text
    assert spark.post("/v1/search", json={"image_id": str(uuid.uuid4())}).status_code == 404
    assert spark.post("/v1/search", json={"listing_id": str(uuid.uuid4())}).status_code == 404
    bad = spark.post("/v1/search/image", files={"image": ("a.jpg", b"not an image", "image/jpeg")})
    assert bad.status_code == 422 and "not a usable image" in bad.text
    ready = ready_within(spark)
    assert ready["ready"], ready
    assert ready["checks"]["engine"].endswith("following " + spark_answers(spark))


def ready_within(client: TestClient, deadline_s: float = 30.0) -> Any:
    """/readyz once it says ready (the answers reader assigns its partitions in the background)."""
    end = time.monotonic() + deadline_s
    while (r := client.get("/readyz")).status_code != 200 and time.monotonic() < end:
        time.sleep(0.1)
    return r.json()


def spark_answers(client: TestClient) -> str:
    topic: str = client.app.state.components.spark.client.kafka.answers_topic  # type: ignore[attr-defined]
    return topic


def poll(client: TestClient, path: str, deadline_s: float = 60.0) -> Any:
    """GET ``path`` until it stops saying pending."""
    end = time.monotonic() + deadline_s
    while True:
        r = client.get(path)
        if r.status_code != 404 or "pending" not in r.text or time.monotonic() > end:
            return r
        time.sleep(0.1)


def test_past_the_timeout_202_then_the_answer_is_read_back(
    memory: SearchService, kafka: KafkaSettings
) -> None:
    body = {"listing_id": str(LISTINGS["listing-1"]), "k": 3}
    with spark_client(memory.store, kafka, 0.5, memory.index.model) as spark:  # no service yet
        r = spark.post("/v1/search", json=body)
        assert r.status_code == 202, r.text
        query_id = r.json()["query_id"]
        assert r.json() == {"query_id": query_id, "status": "pending"}
        assert r.headers["location"] == f"/v1/search/{query_id}"
        early = spark.get(r.headers["location"])
        assert early.status_code == 404 and "pending" in early.text
        assert spark.get(f"/v1/search/{uuid.uuid4()}").json()["detail"].endswith("(unknown or expired)")
        with StandIn(kafka, memory):
            late = poll(spark, r.headers["location"])
    assert late.status_code == 200, late.text
    assert late.json()["query_id"] == query_id
    with TestClient(create_app(ApiSettings(), Components(memory))) as mem:
        same_answer(mem.post("/v1/search", json=body).json(), late.json())


def test_an_error_notice_is_a_422(memory: SearchService, kafka: KafkaSettings) -> None:
    """An API whose model the service does not know: the service says so, the API answers 422."""
    other = ModelInfo(name="not-stored", version="x", dim=32, dtype="float16", weights="random:x")
    with StandIn(kafka, memory), spark_client(memory.store, kafka, 60.0, other) as spark:
        r = spark.post("/v1/search", json={"vector": [1.0] * 32})
        assert r.status_code == 422 and "not-stored" in r.text, r.text
    with spark_client(memory.store, kafka, 0.5, other) as spark:  # no service yet: 202
        r = spark.post("/v1/search", json={"vector": [1.0] * 32})
        assert r.status_code == 202, r.text
        with StandIn(kafka, memory):
            late = poll(spark, r.headers["location"])
        assert late.status_code == 422 and "not-stored" in late.text, late.text


def test_lookalike_search_uses_the_engine_setting(
    memory: SearchService, kafka: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOKALIKE_STORE", memory.store.url)
    monkeypatch.setenv("LOOKALIKE_MODEL_NAME", memory.index.model.name)
    monkeypatch.setenv("LOOKALIKE_KAFKA_BOOTSTRAP", kafka.bootstrap)
    monkeypatch.setenv("LOOKALIKE_KAFKA_QUERIES_TOPIC", kafka.queries_topic)
    monkeypatch.setenv("LOOKALIKE_KAFKA_ANSWERS_TOPIC", kafka.answers_topic)
    monkeypatch.setenv("LOOKALIKE_SEARCH_FOLLOW", "off")  # the memory engine's index: no follower left
    image = memory.store.listing_images(LISTINGS["listing-3"])[0].image_id
    rows = np.stack([memory.index.listing_vectors(LISTINGS[n])[0] for n in ("listing-0", "listing-4")])
    np.save(tmp_path / "q.npy", rows)
    asks = [["--image-id", str(image), "--k", "3"], ["--vector", str(tmp_path / "q.npy"), "--in-stock-only"]]
    found = {}
    for engine in ("memory", "spark"):
        monkeypatch.setenv("LOOKALIKE_SEARCH_ENGINE", engine)
        with StandIn(kafka, memory):
            for n, ask in enumerate(asks):
                result = CliRunner().invoke(app, ["search", *ask, "--json"])
                assert result.exit_code == 0, result.output
                found[engine, n] = json.loads(result.stdout)
    same_answer(found["memory", 0], found["spark", 0])
    assert len(found["spark", 1]) == 2
    for a, b in zip(found["memory", 1], found["spark", 1], strict=True):
        same_answer(a, b)


def test_the_spark_engine_loads_no_index(
    memory: SearchService, kafka: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lookalike serve``'s components on engine spark: the store's model, no vector in memory,
    the answers reader; no broker configured is a clear error."""
    monkeypatch.setenv("LOOKALIKE_STORE", memory.store.url)
    monkeypatch.setenv("LOOKALIKE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LOOKALIKE_MODEL_NAME", memory.index.model.name)
    monkeypatch.setenv("LOOKALIKE_SEARCH_ENGINE", "spark")
    with pytest.raises(ValueError, match="needs LOOKALIKE_KAFKA_BOOTSTRAP"):
        stack.api_components(Settings.from_env())
    monkeypatch.setenv("LOOKALIKE_KAFKA_BOOTSTRAP", kafka.bootstrap)
    monkeypatch.setenv("LOOKALIKE_KAFKA_ANSWERS_TOPIC", kafka.answers_topic)
    components = stack.api_components(Settings.from_env())
    try:
        assert components.spark is not None and components.service is components.spark.service
        assert isinstance(components.service.index, StoreLookup) and len(components.service.index) == 0
        assert components.service.index.model == memory.index.model
    finally:
        assert components.spark is not None and components.ingest is not None
        components.spark.client.close()
        components.ingest.producer.close()
