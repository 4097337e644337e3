"""The HTTP API over the real engine and SQLite (a tiny model stands in for VGG16)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from api.app import create_app
from api.deps import Components
from config.settings import ApiSettings, SearchSettings
from schemas.records import Extracted, ImageRecord, StockLevel
from search.loader import load_index
from search.service import SearchService
from store import Store, StoreUnavailable
from tests.conftest import jpeg_bytes, tiny_model

pytestmark = pytest.mark.integration
LISTINGS = {f"listing-{i}": uuid.uuid4() for i in range(5)}


def seeded_service(store: Store, folder: Path) -> SearchService:
    """Five listings of two photos each, embedded with the tiny model; stock 0..4."""
    model = tiny_model()
    rows = []
    for n, (name, lid) in enumerate(LISTINGS.items()):
        for j in range(2):
            data = jpeg_bytes(10 * n + j)
            path = folder / f"{n}-{j}.jpg"
            path.write_bytes(data)
            image = Image.open(io.BytesIO(data)).convert("RGB")
            record = ImageRecord(lid, uuid.uuid4(), path.as_uri(), "image/jpeg", *image.size, len(data))
            rows.append(Extracted(record, name, model.info.name, model.embed_images([image])[0]))
    store.put_model(model.info)
    store.write_extracted(rows, "float16")
    store.put_stock([StockLevel(lid, i, uuid.uuid4()) for i, lid in enumerate(LISTINGS.values())])
    return SearchService(store, load_index(store, model.info, SearchSettings()), lambda: model)


@pytest.fixture
def client(sqlite_store, tmp_path) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(create_app(ApiSettings(), Components(seeded_service(sqlite_store, tmp_path)))) as c:
        yield c


def test_upload_finds_its_listing_and_reads_back(client: TestClient) -> None:
    r = client.post(
        "/v1/search/image", files={"image": ("q.jpg", jpeg_bytes(20), "image/jpeg")}, data={"k": "3"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["listing_name"] == "listing-2" and len(body["results"]) == 3
    assert body["results"][0]["inventory"] == 2
    scores = [x["score"] for x in body["results"]] + [m["score"] for m in body["results"][0]["images"]]
    assert all(s == round(s, 6) for s in scores)  # float32 scores, not float64 noise
    back = client.get(f"/v1/search/{body['query_id']}")
    assert back.status_code == 200
    assert [x["listing_id"] for x in back.json()["results"]] == [x["listing_id"] for x in body["results"]]
    assert [x["score"] for x in back.json()["results"]] == [x["score"] for x in body["results"]]


def test_search_by_ids_leaves_out_the_own_listing(client: TestClient) -> None:
    lid = str(LISTINGS["listing-1"])
    r = client.post("/v1/search", json={"listing_id": lid, "k": 10, "in_stock_only": True})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert lid not in [x["listing_id"] for x in results]
    assert all(x["inventory"] > 0 for x in results) and len(results) == 3  # listing-0 has no stock
    image_id = results[0]["images"][0]["image_id"]
    assert client.post("/v1/search", json={"image_id": image_id}).status_code == 200
    content = client.get(f"/v1/images/{image_id}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize(
    ("kwargs", "status", "says"),
    [
        ({"json": {"image_id": str(uuid.uuid4())}}, 404, "has no vector"),
        ({"json": {"listing_id": "nope"}}, 422, "UUID"),
        ({"json": {}}, 422, "exactly one of"),
        ({"json": {"listing_id": str(uuid.uuid4()), "k": 0}}, 422, "greater than or equal to 1"),
        ({"json": {"listing_id": str(uuid.uuid4()), "k": 1001}}, 422, "less than or equal to 1000"),
        ({"json": {"listing_id": str(uuid.uuid4()), "colour": "red"}}, 422, "Extra inputs"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "takes a JSON object"),
        ({"files": {"image": ("a.jpg", b"x", "image/jpeg")}}, 415, "to /v1/search/image"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_why(
    client: TestClient, kwargs: dict[str, Any], status: int, says: str
) -> None:
    r = client.post("/v1/search", **kwargs)
    assert r.status_code == status, r.text
    assert says in r.text


@pytest.mark.parametrize(
    ("kwargs", "status", "says"),
    [
        ({"files": {"image": ("a.jpg", b"not an image", "image/jpeg")}}, 422, "not a usable image"),
        ({"files": {"image": ("a.jpg", b"", "image/jpeg")}}, 422, "is empty"),
        ({"files": {"photo": ("a.jpg", b"x", "image/jpeg")}}, 422, "image"),
        ({"files": {"image": ("a.jpg", jpeg_bytes(1), "image/jpeg")}, "data": {"k": "0"}}, 422, "k"),
        ({"json": {"listing_id": str(uuid.uuid4())}}, 415, "fields image (a file)"),
    ],
)
def test_bad_uploads_get_a_4xx_that_says_why(
    client: TestClient, kwargs: dict[str, Any], status: int, says: str
) -> None:
    r = client.post("/v1/search/image", **kwargs)
    assert r.status_code == status, r.text
    assert says in r.text


def test_unknown_query_and_health(client: TestClient) -> None:
    assert client.get(f"/v1/search/{uuid.uuid4()}").status_code == 404
    assert client.get("/v1/search/not-a-uuid").status_code == 422
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and "Lookalike" in page.text


def test_vector_search_and_options(client: TestClient) -> None:
    image_id = client.post("/v1/search", json={"listing_id": str(LISTINGS["listing-3"])}).json()
    first = image_id["results"][0]["images"][0]["image_id"]
    detail = client.get(f"/v1/listings/{image_id['results'][0]['listing_id']}").json()
    assert first in [i["image_id"] for i in detail["images"]]
    dim = client.app.state.components.service.index.model.dim  # type: ignore[attr-defined]
    r = client.post(
        "/v1/search", json={"vector": [1.0] * dim, "k": 2, "aggregation": "mean_top_n", "top_n": 1}
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 2
    wrong = client.post("/v1/search", json={"vector": [1.0] * (dim + 1)})
    assert wrong.status_code == 422 and f"must have {dim} values" in wrong.text
    huge = client.post("/v1/search", json={"vector": [1e300] * dim})
    assert huge.status_code == 422 and "finite" in huge.text
    high = client.post("/v1/search", json={"vector": [1.0] * dim, "min_score": 2.0})
    assert high.status_code == 200 and high.json()["results"] == []


def test_listing_detail_and_thumbnail(client: TestClient) -> None:
    lid = LISTINGS["listing-4"]
    detail = client.get(f"/v1/listings/{lid}")
    assert detail.status_code == 200
    body = detail.json()
    assert body["listing_name"] == "listing-4" and body["inventory"] == 4 and len(body["images"]) == 2
    thumb = client.get(body["images"][0]["thumbnail"], params={"size": 32})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 32
    assert client.get(body["images"][0]["thumbnail"], params={"size": 5000}).status_code == 422
    assert client.get(f"/v1/listings/{uuid.uuid4()}").status_code == 404


def test_readiness_and_metrics(client: TestClient) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {
        "store": "ok",
        "index": "ok: 10 vectors",
        "model": "vgg16_fc7 (32-d, weights random:tiny-test)",
        "follower": "off",
        "broker": "not configured",
    }
    client.post("/v1/search", json={"listing_id": str(LISTINGS["listing-0"])})
    client.post("/v1/search", json={"k": 0})
    client.get("/no/such/path")
    metrics = client.get("/metrics").text
    assert 'lookalike_http_requests_total{handler="search",method="POST",status="200"} 1.0' in metrics
    assert 'lookalike_http_requests_total{handler="search",method="POST",status="422"} 1.0' in metrics
    assert 'lookalike_http_requests_total{handler="unmatched",method="GET",status="404"} 1.0' in metrics
    assert 'lookalike_http_request_seconds_count{handler="search",method="POST"} 2.0' in metrics


def test_ingest_needs_keys_and_a_broker(sqlite_store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = {"image": ("a.jpg", jpeg_bytes(1), "image/jpeg")}
    with TestClient(
        create_app(ApiSettings(), Components(seeded_service(sqlite_store, tmp_path)))
    ) as open_app:
        assert open_app.post("/v1/images", files=files, data={"listing": "x"}).status_code == 403
    keyed = ApiSettings(keys=[SecretStr("s3cret")])
    with TestClient(create_app(keyed, Components(seeded_service(sqlite_store, tmp_path)))) as c:
        assert c.post("/v1/images", files=files, data={"listing": "x"}).status_code == 401
        bad = c.post("/v1/images", files=files, data={"listing": "x"}, headers={"X-API-Key": "nope"})
        assert bad.status_code == 403
        good = c.post("/v1/images", files=files, data={"listing": "x"}, headers={"X-API-Key": "s3cret"})
        assert good.status_code == 503 and "LOOKALIKE_KAFKA_BOOTSTRAP" in good.text
        assert c.post("/v1/search", json={"listing_id": str(LISTINGS["listing-0"])}).status_code == 200


def test_reads_can_require_a_key_and_cors_is_off_by_default(sqlite_store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = ApiSettings(keys=[SecretStr("k")], keys_for_reads=True, cors_origins=["https://shop.example"])
    with TestClient(create_app(settings, Components(seeded_service(sqlite_store, tmp_path)))) as c:
        body = {"listing_id": str(LISTINGS["listing-0"])}
        assert c.post("/v1/search", json=body).status_code == 401
        r = c.post("/v1/search", json=body, headers={"X-API-Key": "k", "Origin": "https://shop.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://shop.example"
    with TestClient(create_app(ApiSettings(), Components(seeded_service(sqlite_store, tmp_path)))) as c:
        r = c.post("/v1/search", json=body, headers={"Origin": "https://shop.example"})
        assert "access-control-allow-origin" not in r.headers


class _StoreDown:
    """A MOCK of a store outage (an unreachable Cassandra cannot be caused on this machine):
    every read raises StoreUnavailable."""

    def __getattr__(self, name: str) -> object:
        def down(*_: object, **__: object) -> None:
            raise StoreUnavailable("no host reachable (mock outage)")

        return down


def test_store_outage_is_a_503_with_the_reason(sqlite_store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = seeded_service(sqlite_store, tmp_path)
    with TestClient(create_app(ApiSettings(), Components(service))) as c:
        service.store = _StoreDown()  # type: ignore[assignment]
        r = c.get(f"/v1/search/{uuid.uuid4()}")
        assert r.status_code == 503 and "no host reachable" in r.text
        assert c.post("/v1/search", json={"listing_id": str(LISTINGS["listing-0"])}).status_code == 503
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "unavailable" in ready.json()["checks"]["store"]
