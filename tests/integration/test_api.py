"""The HTTP API over the real engine and SQLite (a tiny model stands in for VGG16)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from schemas.records import Extracted, ImageRecord, StockLevel
from search.engine import load_index
from search.service import SearchService
from store import Store
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
    return SearchService(store, load_index(store, model.info), lambda: model)


@pytest.fixture
def client(sqlite_store, tmp_path) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(create_app(seeded_service(sqlite_store, tmp_path))) as c:
        yield c


def test_upload_finds_its_listing_and_reads_back(client: TestClient) -> None:
    r = client.post("/v1/search", files={"image": ("q.jpg", jpeg_bytes(20), "image/jpeg")}, data={"k": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["listing_name"] == "listing-2" and len(body["results"]) == 3
    assert body["results"][0]["inventory"] == 2
    back = client.get(f"/v1/search/{body['query_id']}")
    assert back.status_code == 200
    assert [x["listing_id"] for x in back.json()["results"]] == [x["listing_id"] for x in body["results"]]


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
        ({"json": {"listing_id": str(uuid.uuid4()), "colour": "red"}}, 422, "Extra inputs"),
        ({"files": {"image": ("a.jpg", b"not an image", "image/jpeg")}}, 422, "not a usable image"),
        ({"files": {"photo": ("a.jpg", b"x", "image/jpeg")}}, 422, "field named 'image'"),
        (
            {"content": b"hello", "headers": {"content-type": "text/plain"}},
            415,
            "multipart/form-data",
        ),
    ],
)
def test_bad_requests_get_a_4xx_that_says_why(
    client: TestClient, kwargs: dict, status: int, says: str
) -> None:  # type: ignore[type-arg]
    r = client.post("/v1/search", **kwargs)
    assert r.status_code == status, r.text
    assert says in r.text


def test_unknown_query_and_health(client: TestClient) -> None:
    assert client.get(f"/v1/search/{uuid.uuid4()}").status_code == 404
    assert client.get("/v1/search/not-a-uuid").status_code == 422
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and "Lookalike" in page.text
