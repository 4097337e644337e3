"""The analytics read endpoints over a store with a real run: same shapes as the command line's
``--json``, paging, 4xx with a message, 404 before the first run, fresh images scored on the fly."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import Components
from config.settings import ApiSettings
from schemas.analytics import duplicates_json, scored_json
from schemas.codec import l2_normalise
from schemas.records import Extracted, FeatureBatch, ImageRecord, as_uuid, id_array
from store.sqlite import SQLiteStore
from tests.integration.analytics_seed import MODEL, Seeded, seed_store, service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SQLiteStore, Seeded]]:
    folder = tmp_path_factory.mktemp("analytics-api")
    store = SQLiteStore(f"sqlite:///{folder / 'lookalike.db'}")
    store.apply_schema()
    yield store, seed_store(store, folder)
    store.close()


@pytest.fixture(scope="module")
def client(seeded: tuple[SQLiteStore, Seeded]) -> Iterator[TestClient]:
    store, _ = seeded
    with TestClient(create_app(ApiSettings(), Components(service(store)))) as c:
        yield c


def test_runs_and_run(client: TestClient, seeded: tuple[SQLiteStore, Seeded]) -> None:
    _, s = seeded
    r = client.get("/v1/analytics/runs")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["current_run_id"] == str(s.result.run.run_id)
    assert body["runs"][0]["status"] == "complete" and body["runs"][0]["counts"]["images"] == 600
    one = client.get(f"/v1/analytics/runs/{s.result.run.run_id}")
    assert one.status_code == 200 and one.json()["run_id"] == str(s.result.run.run_id)
    missing = client.get(f"/v1/analytics/runs/{uuid.uuid4()}")
    assert missing.status_code == 404 and "no analytics run" in missing.json()["detail"]


def test_clusters_and_paged_members(client: TestClient) -> None:
    body = client.get("/v1/analytics/clusters").json()
    assert len(body["clusters"]) == 6 and sum(c["size"] for c in body["clusters"]) == 600
    first = body["clusters"][0]
    assert {"cluster_id", "size", "medoid_image_id", "cohesion", "nearest"} <= set(first)
    page = client.get(f"/v1/analytics/clusters/{first['cluster_id']}/members?offset=0&limit=10").json()
    assert page["size"] == first["size"] and len(page["members"]) == 10
    assert page["members"][0] == first["medoid_image_id"]  # the gallery starts at the medoid
    rest = client.get(f"/v1/analytics/clusters/{first['cluster_id']}/members?offset=10&limit=1000").json()
    assert len(page["members"]) + len(rest["members"]) == first["size"]
    assert not set(page["members"]) & set(rest["members"])
    assert client.get(f"/v1/analytics/clusters/0/members?run={body['run_id']}").status_code == 200


def test_clusters_with_their_most_central_images(client: TestClient) -> None:
    assert all(c["central"] == [] for c in client.get("/v1/analytics/clusters").json()["clusters"])
    body = client.get("/v1/analytics/clusters?central=5").json()
    for c in body["clusters"]:
        members = client.get(f"/v1/analytics/clusters/{c['cluster_id']}/members?limit=5").json()["members"]
        assert c["central"] == members and c["central"][0] == c["medoid_image_id"]


def test_clusters_of_a_run_kept_before_the_strips_read_them_from_the_members(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'old.db'}")
    store.apply_schema()
    seed_store(store, None, n=200, clusters=3)
    with sqlite3.connect(tmp_path / "old.db") as db:  # as a run written before migration 003
        db.execute("DELETE FROM analytics_cluster_central")
    with TestClient(create_app(ApiSettings(), Components(service(store)))) as c:
        for cluster in c.get("/v1/analytics/clusters?central=4").json()["clusters"]:
            members = c.get(f"/v1/analytics/clusters/{cluster['cluster_id']}/members?limit=4").json()
            assert cluster["central"] == members["members"]
    store.close()


@pytest.mark.parametrize(
    ("url", "status", "says"),
    [
        ("/v1/analytics/clusters?central=13", 422, "less than or equal to 12"),
        ("/v1/analytics/clusters/0/members?offset=-1", 422, "greater than or equal to 0"),
        ("/v1/analytics/clusters/0/members?limit=0", 422, "greater than or equal to 1"),
        ("/v1/analytics/clusters/0/members?offset=100000", 400, "past the cluster's"),
        ("/v1/analytics/clusters/99/members", 404, "has no cluster 99"),
        ("/v1/analytics/outliers?kind=weird", 422, "'catalogue' or 'listing'"),
        ("/v1/analytics/outliers?limit=100000", 422, "less than or equal to 1000"),
        (f"/v1/analytics/clusters?run={uuid.UUID(int=7)}", 404, "no analytics run"),
        ("/v1/analytics/clusters?run=not-a-uuid", 422, "UUID"),
        (f"/v1/analytics/images/{uuid.UUID(int=9)}", 404, "neither in run"),
    ],
)
def test_bad_requests_say_what_was_wrong(client: TestClient, url: str, status: int, says: str) -> None:
    r = client.get(url)
    assert r.status_code == status, r.text
    assert says in r.text


def test_outliers_and_misfits_have_the_cli_shape(
    client: TestClient, seeded: tuple[SQLiteStore, Seeded]
) -> None:
    store, s = seeded
    body = client.get("/v1/analytics/outliers?kind=catalogue&limit=5").json()
    cli = scored_json(store.top_scores(s.result.run.run_id, "catalogue", 5))
    assert [{k: v for k, v in row.items() if k != "listing_name"} for row in body] == cli
    assert body[0]["listing_name"].startswith("listing-") and body[0]["neighbours"]
    planted = {bytes(s.planted.catalogue.image_ids[r]).ljust(16, b"\0") for r in s.planted.outliers}
    assert uuid.UUID(body[0]["image_id"]).bytes in planted
    misfits = client.get("/v1/analytics/misfits?limit=3").json()
    assert misfits == client.get("/v1/analytics/outliers?kind=listing&limit=3").json()


def test_duplicates_with_names_and_stock(client: TestClient, seeded: tuple[SQLiteStore, Seeded]) -> None:
    store, s = seeded
    body = client.get("/v1/analytics/duplicates?cross_listing=true").json()
    assert body and all(g["cross_listing"] for g in body)
    groups = store.read_duplicates(s.result.run.run_id, True)
    cli = duplicates_json(groups, s.names)
    assert [
        {**g, "images": [{k: v for k, v in i.items() if k != "inventory"} for i in g["images"]]} for g in body
    ] == cli
    assert all(isinstance(i["inventory"], int) for g in body for i in g["images"])
    assert client.get("/v1/analytics/duplicates?cross_listing=false").json() == []


def test_image_and_listing_analysis(client: TestClient, seeded: tuple[SQLiteStore, Seeded]) -> None:
    _, s = seeded
    misfit = s.result.misfits[0]
    a = client.get(f"/v1/analytics/images/{misfit.image_id}").json()
    assert a["fresh"] is False and a["listing_id"] == str(misfit.listing_id)
    assert a["misfit_score"] == pytest.approx(misfit.score, abs=1e-5)
    listing = client.get(f"/v1/analytics/listings/{misfit.listing_id}?min_percentile=99").json()
    marked = [i["image_id"] for i in listing["images"] if i["misfit"]]
    assert str(misfit.image_id) in marked and len(listing["images"]) == 5


def test_map_is_compact_columns(client: TestClient, seeded: tuple[SQLiteStore, Seeded]) -> None:
    _, s = seeded
    body = client.get("/v1/analytics/map").json()
    assert body["count"] == 600 == len(body["x"]) == len(body["y"]) == len(body["cluster"])
    assert len(body["image_ids"]) == 600 and max(body["listing"]) == len(body["listing_ids"]) - 1
    i = body["image_ids"].index(str(s.result.outliers[0].image_id))
    assert body["listing_ids"][body["listing"][i]] == str(s.result.outliers[0].listing_id)
    assert client.get("/v1/analytics/map").content == client.get("/v1/analytics/map").content  # cached


def test_openapi_documents_the_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("runs", "runs/{run_id}", "clusters", "clusters/{cluster_id}/members", "outliers",
                 "misfits", "duplicates", "images/{image_id}", "listings/{listing_id}", "map"):  # fmt: skip
        assert "200" in paths[f"/v1/analytics/{path}"]["get"]["responses"]
    assert "schema" in paths["/v1/analytics/map"]["get"]["responses"]["200"]["content"]["application/json"]


def test_an_image_stored_after_the_run_is_scored_fresh(
    client: TestClient, seeded: tuple[SQLiteStore, Seeded], tmp_path: Path
) -> None:
    store, s = seeded
    cat = s.planted.catalogue
    source = 3  # a re-encoded copy of image 3, put in another listing
    other = as_uuid(cat.listing_ids[100])
    copy = l2_normalise(cat.vectors[source].astype(np.float32) + 0.001)
    record = ImageRecord(other, uuid.uuid4(), "test://none", "image/jpeg", 1, 1, 1)
    store.write_extracted([Extracted(record, s.names[other], MODEL.name, copy)], MODEL.dtype)
    index = client.app.state.components.service.index  # type: ignore[attr-defined]
    index.add(FeatureBatch(id_array([other]), id_array([record.image_id]), copy.reshape(1, -1)))
    a = client.get(f"/v1/analytics/images/{record.image_id}").json()
    assert a["fresh"] is True and a["cluster_id"] == s.result.images.cluster[source]
    assert a["duplicates"][0]["image_id"] == str(as_uuid(cat.image_ids[source]))
    index.remove_images([record.image_id])


def test_no_run_yet_is_a_404_saying_what_to_do(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'empty.db'}")
    store.apply_schema()
    store.put_model(MODEL)
    rng = np.random.default_rng(0)
    lid = uuid.uuid4()
    store.write_extracted(
        [Extracted(ImageRecord(lid, uuid.uuid4(), "test://", "image/jpeg", 1, 1, 1), "x", MODEL.name,
                   l2_normalise(rng.normal(size=MODEL.dim)))],
        MODEL.dtype,
    )  # fmt: skip
    with TestClient(create_app(ApiSettings(), Components(service(store)))) as c:
        for url in ("clusters", "outliers", "duplicates", "map", f"images/{uuid.uuid4()}"):
            r = c.get(f"/v1/analytics/{url}")
            assert r.status_code == 404 and "run `lookalike analyze` first" in r.json()["detail"], url
        assert c.get("/v1/analytics/runs").json() == {"current_run_id": None, "runs": []}
    store.close()
