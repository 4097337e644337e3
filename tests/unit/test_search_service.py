"""The query service over a real SQLite store: stock join, write-back, query kinds, errors,
and the followers that keep a loaded index fresh."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
import uuid

import numpy as np
import pytest

from config.settings import SearchSettings
from schemas.codec import l2_normalise
from schemas.records import Extracted, ImageRecord, ModelInfo, StockLevel
from search.engine import UnknownId
from search.follow import Follower, StoreScanSource
from search.loader import load_index
from search.scoring import ScoreOptions
from search.service import Query, SearchService
from search.tier import SearchIndex
from tests.unit.test_scoring import oracle

DIM = 12
MODEL = ModelInfo("vgg16_fc7", "test", DIM, "float16", "random:test")


def extracted(rng: np.random.Generator, listing: uuid.UUID, n: int) -> list[Extracted]:
    return [
        Extracted(
            ImageRecord(listing, uuid.uuid4(), "test://", "image/jpeg", 1, 1, 1),
            f"listing-{listing.hex[:6]}",
            MODEL.name,
            l2_normalise(rng.normal(size=DIM)),
        )
        for _ in range(n)
    ]


@pytest.fixture
def catalogue(sqlite_store):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(11)
    rows, stock = [], []
    for n in range(30):
        lid = uuid.UUID(int=int(rng.integers(1, 2**62)) << 64)
        rows += extracted(rng, lid, int(rng.integers(1, 5)))
        if n % 5:  # every fifth listing has no stock row at all
            stock.append(StockLevel(lid, 0 if n % 3 == 0 else n, uuid.uuid4()))
    sqlite_store.put_model(MODEL)
    sqlite_store.write_extracted(rows, MODEL.dtype)
    sqlite_store.put_stock(stock)
    return rows, {s.listing_id: s.inventory for s in stock}


def holds(index: SearchIndex, image_id: uuid.UUID) -> bool:
    try:
        index.image_vector(image_id)
    except UnknownId:
        return False
    return True


def stored(rows: list[Extracted]) -> tuple[np.ndarray, list[uuid.UUID]]:
    v = np.array([r.vector for r in rows]).astype(np.float16).astype(np.float32)
    return v, [r.image.listing_id for r in rows]


@pytest.mark.parametrize("in_stock_only", [False, True])
def test_stock_join_and_filter(sqlite_store, catalogue, in_stock_only: bool) -> None:  # type: ignore[no-untyped-def]
    rows, inventory = catalogue
    service = SearchService(sqlite_store, load_index(sqlite_store, MODEL, SearchSettings()))
    q = l2_normalise(np.random.default_rng(0).normal(size=DIM))
    answer = service.search(Query(vector=q), ScoreOptions(k=8), in_stock_only)
    v, listing_of = stored(rows)
    want = oracle(v, listing_of, q, ScoreOptions(k=30))
    if in_stock_only:
        want = [w for w in want if inventory.get(w[0], 0) > 0]
    assert [r.listing_id for r in answer.results] == [w[0] for w in want[:8]]
    assert [r.inventory for r in answer.results] == [inventory.get(r.listing_id) for r in answer.results]


def test_write_back_is_sorted_and_one_slice(sqlite_store, catalogue) -> None:  # type: ignore[no-untyped-def]
    service = SearchService(sqlite_store, load_index(sqlite_store, MODEL, SearchSettings()))
    queries = l2_normalise(np.random.default_rng(1).normal(size=(3, DIM)))
    answers = service.search_many(queries, ScoreOptions(k=10, aggregation="count_above", threshold=0.0))
    for answer in answers:
        back = sqlite_store.read_query_results(answer.query_id)
        assert [r.listing_id for r in back] == [r.listing_id for r in answer.results]
        scores = [r.score for r in back]
        assert scores == sorted(scores, reverse=True)
        assert [r.listing_id for r in sqlite_store.read_query_results(answer.query_id, 3)] == [
            r.listing_id for r in answer.results[:3]
        ]


def test_query_by_image_and_listing_leaves_out_its_own_listing(sqlite_store, catalogue) -> None:  # type: ignore[no-untyped-def]
    rows, _ = catalogue
    service = SearchService(sqlite_store, load_index(sqlite_store, MODEL, SearchSettings()))
    first = rows[0].image
    by_image = service.search(Query(image_id=first.image_id), ScoreOptions(k=5))
    assert first.listing_id not in [r.listing_id for r in by_image.results]
    by_listing = service.search(Query(listing_id=first.listing_id), ScoreOptions(k=5))
    v, listing_of = stored(rows)
    own = v[[i for i, lid in enumerate(listing_of) if lid == first.listing_id]]
    combined = l2_normalise(own.mean(axis=0))
    want = oracle(v, listing_of, combined, ScoreOptions(k=5), exclude={first.listing_id})
    assert [r.listing_id for r in by_listing.results] == [w[0] for w in want]


def test_min_score(sqlite_store, catalogue) -> None:  # type: ignore[no-untyped-def]
    service = SearchService(sqlite_store, load_index(sqlite_store, MODEL, SearchSettings()))
    q = l2_normalise(np.random.default_rng(2).normal(size=DIM))
    answer = service.search(Query(vector=q), ScoreOptions(k=30, min_score=0.3))
    assert answer.results and all(r.score >= 0.3 for r in answer.results)


def test_clear_errors(sqlite_store, catalogue) -> None:  # type: ignore[no-untyped-def]
    service = SearchService(sqlite_store, load_index(sqlite_store, MODEL, SearchSettings()))
    with pytest.raises(ValueError, match=f"must have {DIM} values, got 4"):
        service.search(Query(vector=np.ones(4, np.float32)), ScoreOptions())
    with pytest.raises(UnknownId, match=r"image .* has no vector"):
        service.search(Query(image_id=uuid.uuid4()), ScoreOptions())
    with pytest.raises(UnknownId, match=r"listing .* has no vectors"):
        service.search(Query(listing_id=uuid.uuid4()), ScoreOptions())
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        service.search(Query(vector=np.ones(DIM, np.float32)), ScoreOptions(k=0))
    with pytest.raises(ValueError, match="exactly one of"):
        Query()


def test_store_scan_follower_sees_writes_and_deletes(sqlite_store, catalogue) -> None:  # type: ignore[no-untyped-def]
    index = load_index(sqlite_store, MODEL, SearchSettings(follow="off"))
    before = len(index)
    follower = Follower(index, StoreScanSource(sqlite_store, MODEL, index), interval_s=0.05)
    new = extracted(np.random.default_rng(5), uuid.uuid4(), 2)
    sqlite_store.write_extracted(new, MODEL.dtype)
    assert follower.poll_once() == 2
    top = index.search(new[0].vector, ScoreOptions(k=1))[0]
    assert top.listing_id == new[0].image.listing_id
    gone = new[0].image.image_id
    with sqlite3.connect(sqlite_store.path) as db:  # a delete made outside the Store protocol
        db.execute("DELETE FROM features WHERE image_id = ?", (gone.bytes,))
    assert follower.poll_once() == 1
    assert len(index) == before + 1
    with pytest.raises(UnknownId):
        index.image_vector(gone)
    assert follower.poll_once() == 0


def test_follower_thread_makes_a_write_searchable(sqlite_store, catalogue) -> None:  # type: ignore[no-untyped-def]
    settings = SearchSettings(follow="scan", follow_interval_s=0.05)
    index = load_index(sqlite_store, MODEL, settings)
    assert index.follower is not None
    try:
        new = extracted(np.random.default_rng(6), uuid.uuid4(), 1)
        # an id ending in NUL: numpy's S16 drops trailing NULs, so raw-bytes comparisons miss it
        image = dataclasses.replace(new[0].image, image_id=uuid.UUID(bytes=uuid.uuid4().bytes[:15] + b"\0"))
        new = [dataclasses.replace(new[0], image=image)]
        sqlite_store.write_extracted(new, MODEL.dtype)
        deadline = time.monotonic() + 20
        while not holds(index, image.image_id):
            assert time.monotonic() < deadline, "the follower did not pick the write up"
            time.sleep(0.02)
        assert index.search(new[0].vector, ScoreOptions(k=1))[0].matches[0][0] == image.image_id
    finally:
        index.follower.stop()
