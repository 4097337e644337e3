"""Shared passes through real HTTP (the app under FastAPI's TestClient, requests from several
threads): searches that wait during a pass are answered by the next one with the answers they
get alone, the search queue's limit gives 503 with ``Retry-After``, uploads waiting share one
forward pass of the CNN, and the pass metrics are on /metrics. Passes are held with an event."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import Components
from config.settings import ApiSettings
from search.service import SearchService
from search.tier import SearchIndex
from store import Store
from tests.conftest import jpeg_bytes
from tests.integration.test_api import LISTINGS, seeded_service
from tests.unit.test_coalesce import WAIT_S, HeldIndex, HeldModel, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def held(sqlite_store: Store, tmp_path: Path) -> Iterator[tuple[TestClient, HeldIndex, SearchService]]:
    """The app over an index whose next pass can be held; at most 2 searches may wait."""
    seeded = seeded_service(sqlite_store, tmp_path)
    index = HeldIndex(seeded.index)
    model = HeldModel()
    service = SearchService(sqlite_store, cast(SearchIndex, index), lambda: model, batch_max=64)
    settings = ApiSettings(search_queue=2, model_concurrency=1, model_queue=3)
    with TestClient(create_app(settings, Components(service))) as client:
        yield client, index, service


def post_all(client: TestClient, bodies: list[dict[str, Any]]) -> list[Future[httpx.Response]]:
    pool = ThreadPoolExecutor(len(bodies))
    return [pool.submit(client.post, "/v1/search", json=body) for body in bodies]


def test_searches_waiting_share_a_pass_and_the_queue_limit_answers_503(
    held: tuple[TestClient, HeldIndex, SearchService],
) -> None:
    client, index, service = held
    bodies = [
        {"listing_id": str(LISTINGS["listing-0"]), "k": 3},
        {"listing_id": str(LISTINGS["listing-1"]), "k": 2, "in_stock_only": True},
        {"listing_id": str(LISTINGS["listing-2"]), "k": 4, "aggregation": "mean_top_n", "top_n": 1},
    ]
    alone = [client.post("/v1/search", json=body).json()["results"] for body in bodies]

    index.hold = True
    [first] = post_all(client, bodies[:1])
    assert index.entered.wait(WAIT_S)
    waiting = post_all(client, bodies[1:])
    wait_for(lambda: service.searches.waiting == 2)
    refused = client.post("/v1/search", json={"listing_id": str(LISTINGS["listing-3"])})
    index.release.set()

    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert "already wait for the next pass (the limit is 2)" in refused.json()["detail"]
    answers = [f.result(WAIT_S) for f in [first, *waiting]]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json()["results"] for a in answers] == alone  # the answers each got alone

    metrics = client.get("/metrics").text
    assert 'lookalike_search_batch_size_count{stage="search"} 5.0' in metrics  # 3 alone, 1, then 2
    assert 'lookalike_search_batch_size_sum{stage="search"} 6.0' in metrics
    assert re.search(r'lookalike_search_queue_wait_seconds_count\{stage="search"\} 6\.0', metrics)
    assert re.search(r'lookalike_search_pass_seconds_bucket\{le="\+Inf",stage="search"\} 5\.0', metrics)


def test_uploads_waiting_share_one_forward_pass(held: tuple[TestClient, HeldIndex, SearchService]) -> None:
    client, _, service = held
    model = cast(HeldModel, service.model)
    photos = [jpeg_bytes(20 + i) for i in range(4)]

    def upload(data: bytes) -> httpx.Response:
        return client.post(  # type: ignore[no-any-return]
            "/v1/search/image", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "3"}
        )

    alone = [upload(p).json()["results"] for p in photos]
    model.hold, model.passes = True, []
    pool = ThreadPoolExecutor(len(photos) + 1)
    first = pool.submit(upload, photos[0])
    assert model.entered.wait(WAIT_S)
    rest = [pool.submit(upload, p) for p in photos[1:]]
    wait_for(lambda: service.uploads.waiting == 3)
    refused = upload(photos[0])  # 1 decoding + 3 queued: the upload limit (concurrency + queue)
    model.release.set()

    assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
    answers = [f.result(WAIT_S) for f in [first, *rest]]
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.json()["results"] for a in answers] == alone
    assert model.passes == [1, 3]
    assert 'lookalike_search_batch_size_sum{stage="embed"} 8.0' in client.get("/metrics").text
    assert uuid.UUID(answers[0].json()["query_id"])
