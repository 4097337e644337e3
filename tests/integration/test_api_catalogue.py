"""``GET /v1/listings``: the catalogue page by page (what the web page's first screen shows), over
the real engine and SQLite: every listing once, with its name, live stock, image count and first
images; the end of the catalogue said on its last page; bad paging parameters a 422."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import Components
from config.settings import ApiSettings
from schemas.records import Extracted, ImageRecord
from store.sqlite import SQLiteStore
from tests.integration.test_api import LISTINGS, seeded_service

pytestmark = pytest.mark.integration
UNSTOCKED = uuid.UUID(int=1)  # a listing with three images and no stock level


@pytest.fixture
def client(sqlite_store: SQLiteStore, tmp_path: Path) -> Iterator[TestClient]:
    service = seeded_service(sqlite_store, tmp_path)  # five listings of two images, stock 0..4
    info = service.index.model
    vector = sqlite_store.listing_features(LISTINGS["listing-0"], info).vectors[0]
    image = ImageRecord(UNSTOCKED, uuid.uuid4(), "file:///none.jpg", "image/jpeg", 8, 8, 10)
    rows = [
        Extracted(replace(image, image_id=uuid.uuid4()), "no stock yet", info.name, vector) for _ in range(3)
    ]
    sqlite_store.write_extracted(rows, "float16")
    with TestClient(create_app(ApiSettings(), Components(service))) as c:
        yield c


def pages(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    out, after = [], None
    while True:
        query = {**params, **({"after": after} if after else {})}
        r = client.get("/v1/listings", params=query)
        assert r.status_code == 200, r.text
        out.append(r.json())
        after = out[-1]["next_after"]
        if after is None:
            return out


def test_the_catalogue_page_by_page(client: TestClient) -> None:
    walked = pages(client, limit=2)
    listings = [row for page in walked for row in page["listings"]]

    assert [len(p["listings"]) for p in walked] == [2, 2, 2]  # six listings; the last page says so
    assert [p["next_after"] for p in walked[:-1]] == [p["listings"][-1]["listing_id"] for p in walked[:-1]]
    ids = [row["listing_id"] for row in listings]
    assert ids == sorted(ids, key=lambda i: uuid.UUID(i).bytes)  # SQLite's order: id bytes
    by_name = {row["listing_name"]: row for row in listings}
    assert set(by_name) == {*LISTINGS, "no stock yet"}
    for n in range(5):
        row = by_name[f"listing-{n}"]
        assert row["listing_id"] == str(LISTINGS[f"listing-{n}"])
        assert row["inventory"] == n and row["image_count"] == 2 and len(row["images"]) == 2
    assert by_name["no stock yet"]["inventory"] is None and by_name["no stock yet"]["image_count"] == 3
    first = by_name["listing-3"]["images"]
    assert [i["image_id"] for i in first] == sorted(
        (i["image_id"] for i in first), key=lambda i: uuid.UUID(i).bytes
    )
    thumb = client.get(f"{first[0]['thumbnail']}?size=64")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_images_per_listing_and_one_page_for_all(client: TestClient) -> None:
    (page,) = pages(client, limit=6, images=1)
    assert len(page["listings"]) == 6 and page["next_after"] is None
    assert all(len(row["images"]) == 1 for row in page["listings"])
    assert all(row["images"] == [] for row in client.get("/v1/listings?images=0").json()["listings"])


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("limit=0", "greater than or equal to 1"),
        ("limit=201", "less than or equal to 200"),
        ("after=nope", "UUID"),
        ("images=21", "less than or equal to 20"),
    ],
)
def test_bad_paging_is_a_422_that_says_why(client: TestClient, query: str, says: str) -> None:
    r = client.get(f"/v1/listings?{query}")
    assert r.status_code == 422 and says in r.text
