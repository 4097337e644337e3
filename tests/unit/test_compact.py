"""The compact tier over a real SQLite store, held to the in-memory engine: the same answers
when its candidates cover everything, recall measured (and able to fall short), deletes, the
fresh tier, merging, the stock filter through the service, and the follower."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest

from config.settings import SearchSettings
from schemas.codec import l2_normalise
from schemas.records import Extracted, FeatureBatch, ImageRecord, ModelInfo, StockLevel, id_array
from search.compact import CompactIndex
from search.compact_build import build_compact
from search.engine import UnknownId, VectorIndex
from search.follow import Follower, StoreScanSource
from search.scoring import RankedListing, ScoreOptions
from search.service import Query, SearchService
from search.tier import SearchIndex
from store.sqlite import SQLiteStore

DIM = 32
MODEL = ModelInfo("vgg16_fc7", "test", DIM, "float16", "random:test")
COVER_ALL = {"compact_dims": 8, "compact_candidates": 10_000, "compact_nprobe": 10_000, "compact_nlist": 4}


def rows_for(rng: np.random.Generator, listings: int, centres: int = 6) -> list[Extracted]:
    """Listings of 1-5 images near one of a few centres (so listings tie closely)."""
    middle = l2_normalise(rng.normal(size=(centres, DIM)))
    out = []
    for _ in range(listings):
        listing, near = uuid.uuid4(), middle[rng.integers(centres)]
        for _ in range(int(rng.integers(1, 6))):
            image = ImageRecord(listing, uuid.uuid4(), "test://", "image/jpeg", 1, 1, 1)
            vector = l2_normalise(near + rng.normal(scale=0.4, size=DIM) / np.sqrt(DIM))
            out.append(Extracted(image, f"listing-{listing.hex[:6]}", MODEL.name, vector))
    return out


def batch_of(rows: list[Extracted]) -> FeatureBatch:
    return FeatureBatch(
        id_array(r.image.listing_id for r in rows),
        id_array(r.image.image_id for r in rows),
        np.array([r.vector for r in rows], dtype=np.float32),
    )


@pytest.fixture
def catalogue(sqlite_store: SQLiteStore) -> list[Extracted]:
    rows = rows_for(np.random.default_rng(3), 60)
    sqlite_store.put_model(MODEL)
    sqlite_store.write_extracted(rows, MODEL.dtype)
    return rows


def both(store: SQLiteStore, rows: list[Extracted], **settings: object) -> tuple[CompactIndex, VectorIndex]:
    chosen = SearchSettings(**{**COVER_ALL, **settings})  # type: ignore[arg-type]
    memory = VectorIndex(MODEL, SearchSettings())
    memory.reset([batch_of(rows)])
    return build_compact(store, MODEL, chosen), memory


def queries(n: int, seed: int = 5) -> np.ndarray:
    return l2_normalise(np.random.default_rng(seed).normal(size=(n, DIM)))


def same(got: list[RankedListing], want: list[RankedListing]) -> None:
    assert [r.listing_id for r in got] == [r.listing_id for r in want]
    np.testing.assert_allclose([r.score for r in got], [r.score for r in want], rtol=0, atol=1e-6)
    assert [[i for i, _ in r.matches] for r in got] == [[i for i, _ in r.matches] for r in want]


def assert_same_answers(compact: SearchIndex, memory: SearchIndex, opts: ScoreOptions) -> None:
    for q in queries(6):
        same(compact.search(q, opts), memory.search(q, opts))


@pytest.mark.parametrize(
    "opts",
    [
        ScoreOptions(k=10),
        ScoreOptions(k=7, aggregation="mean_top_n", top_n=2),
        ScoreOptions(k=5, aggregation="count_above", threshold=0.3),
        ScoreOptions(k=60, min_score=0.1, max_matches=2),
    ],
)
def test_same_answers_as_the_exact_index_when_candidates_cover_everything(
    sqlite_store: SQLiteStore, catalogue: list[Extracted], opts: ScoreOptions
) -> None:
    compact, memory = both(sqlite_store, catalogue)
    assert len(compact) == len(memory) == len(catalogue)
    assert compact.listing_count == memory.listing_count == 60
    assert_same_answers(compact, memory, opts)
    batch = queries(4)
    for got, want in zip(compact.search_many(batch, opts), memory.search_many(batch, opts), strict=True):
        same(got, want)
    own = catalogue[0].image.listing_id
    for q in queries(3, seed=8):
        got = compact.search(q, opts, exclude=[own])
        same(got, memory.search(q, opts, exclude=[own]))
        assert own not in {r.listing_id for r in got}
    only = {r.image.listing_id for r in catalogue[::7]}
    for q in queries(3, seed=9):
        same(compact.search(q, opts, only=only), memory.search(q, opts, only=only))


def test_lookups_read_full_vectors_from_the_store(
    sqlite_store: SQLiteStore, catalogue: list[Extracted]
) -> None:
    compact, memory = both(sqlite_store, catalogue)
    first = catalogue[0].image
    np.testing.assert_array_equal(
        compact.listing_vectors(first.listing_id), memory.listing_vectors(first.listing_id)
    )
    listing, vector = compact.image_vector(first.image_id)
    want_listing, want_vector = memory.image_vector(first.image_id)
    assert listing == want_listing == first.listing_id
    np.testing.assert_array_equal(vector, want_vector)
    with pytest.raises(UnknownId):
        compact.image_vector(uuid.uuid4())
    with pytest.raises(UnknownId):
        compact.listing_vectors(uuid.uuid4())
    with pytest.raises(ValueError, match="32 values"):
        compact.search(np.ones(DIM + 1, dtype=np.float32), ScoreOptions())


def test_recall_is_measured_at_build_and_falls_short_with_few_candidates(sqlite_store: SQLiteStore) -> None:
    rows = rows_for(np.random.default_rng(4), 400, centres=40)
    sqlite_store.put_model(MODEL)
    sqlite_store.write_extracted(rows, MODEL.dtype)
    full = build_compact(sqlite_store, MODEL, SearchSettings(**COVER_ALL))  # type: ignore[arg-type]
    assert full.recall_at_10 == 1.0
    narrow = SearchSettings(compact_dims=2, compact_candidates=1, compact_nlist=16, compact_nprobe=1)
    starved = build_compact(sqlite_store, MODEL, narrow)
    assert starved.recall_at_10 is not None and starved.recall_at_10 < 0.9
    memory = VectorIndex(MODEL, SearchSettings())
    memory.reset([batch_of(rows)])
    qs = queries(8)
    exact = [[r.listing_id.bytes for r in answer] for answer in memory.search_many(qs, ScoreOptions(k=10))]
    assert full.measure_recall(qs, exact) == 1.0
    assert starved.measure_recall(qs, exact) < 1.0


def test_deletes_behave_as_in_memory(sqlite_store: SQLiteStore, catalogue: list[Extracted]) -> None:
    compact, memory = both(sqlite_store, catalogue)
    gone_images = [catalogue[1].image.image_id, catalogue[2].image.image_id, uuid.uuid4()]
    gone_listing = catalogue[-1].image.listing_id
    for index in (compact, memory):
        assert index.remove_images(gone_images) == 2
        assert index.remove_listing(gone_listing) == sum(
            r.image.listing_id == gone_listing for r in catalogue
        )
        assert index.remove_listing(gone_listing) == 0
    assert len(compact) == len(memory)
    assert set(compact.image_id_array().tolist()) == set(memory.image_id_array().tolist())
    assert_same_answers(compact, memory, ScoreOptions(k=60))  # the store still holds them: ignored
    answers = compact.search_many(queries(6), ScoreOptions(k=60))
    assert all(r.listing_id != gone_listing for a in answers for r in a)
    matched = {i for a in answers for r in a for i, _ in r.matches}
    assert matched.isdisjoint(gone_images)
    with pytest.raises(UnknownId):
        compact.image_vector(gone_images[0])


def test_fresh_vectors_are_searchable_without_rebuild_and_survive_the_merge(
    sqlite_store: SQLiteStore, catalogue: list[Extracted]
) -> None:
    compact, memory = both(sqlite_store, catalogue, compact_fresh_max_rows=1_000)
    rng = np.random.default_rng(21)
    new = rows_for(rng, 5)
    old_listing = catalogue[3].image.listing_id
    extra = rows_for(rng, 1)
    extra = [
        dataclasses.replace(e, image=dataclasses.replace(e.image, listing_id=old_listing)) for e in extra
    ]
    replaced = dataclasses.replace(catalogue[4], vector=l2_normalise(rng.normal(size=DIM)))
    changes = batch_of([*new, *extra, replaced])
    for index in (compact, memory):
        index.add(changes)
    assert compact.fresh_rows == len(changes)
    assert len(compact) == len(memory)
    assert_same_answers(compact, memory, ScoreOptions(k=30))  # fresh rows: from memory, not the store
    probe = new[0].vector
    assert compact.search(probe, ScoreOptions(k=1))[0].listing_id == new[0].image.listing_id

    sqlite_store.write_extracted([*new, *extra, replaced], MODEL.dtype)  # as the follower would see them
    compact.compact()
    assert compact.fresh_rows == 0
    assert len(compact) == len(memory)
    assert_same_answers(compact, memory, ScoreOptions(k=30))
    assert compact.search(probe, ScoreOptions(k=1))[0].listing_id == new[0].image.listing_id


def test_fresh_tier_merges_past_its_limit(sqlite_store: SQLiteStore, catalogue: list[Extracted]) -> None:
    compact, memory = both(sqlite_store, catalogue, compact_fresh_max_rows=3)
    new = rows_for(np.random.default_rng(22), 4)
    sqlite_store.write_extracted(new, MODEL.dtype)
    for index in (compact, memory):
        index.add(batch_of(new))
    assert compact.fresh_rows == 0  # more than 3: encoded into the codes
    assert len(compact) == len(memory)
    assert_same_answers(compact, memory, ScoreOptions(k=20))


@pytest.mark.parametrize("in_stock_only", [False, True])
def test_service_stock_filter_over_either_tier(
    sqlite_store: SQLiteStore, catalogue: list[Extracted], in_stock_only: bool
) -> None:
    listings = list(dict.fromkeys(r.image.listing_id for r in catalogue))
    sqlite_store.put_stock([StockLevel(lid, n % 3, uuid.uuid4()) for n, lid in enumerate(listings) if n % 4])
    compact, memory = both(sqlite_store, catalogue)
    services = [SearchService(sqlite_store, compact), SearchService(sqlite_store, memory)]
    for q in queries(4):
        got, want = (s.search(Query(vector=q), ScoreOptions(k=6), in_stock_only) for s in services)
        assert [r.listing_id for r in got.results] == [r.listing_id for r in want.results]
        assert [r.inventory for r in got.results] == [r.inventory for r in want.results]
        if in_stock_only:
            assert all(r.inventory for r in got.results)
    by_image = services[0].search(Query(image_id=catalogue[0].image.image_id), ScoreOptions(k=5))
    assert catalogue[0].image.listing_id not in {r.listing_id for r in by_image.results}


def test_follower_keeps_the_compact_index_fresh(
    sqlite_store: SQLiteStore, catalogue: list[Extracted]
) -> None:
    compact, _ = both(sqlite_store, catalogue)
    follower = Follower(compact, StoreScanSource(sqlite_store, MODEL, compact), interval_s=60)
    new = rows_for(np.random.default_rng(23), 2)
    sqlite_store.write_extracted(new, MODEL.dtype)
    gone = catalogue[0].image
    sqlite_store.delete_images(gone.listing_id, [gone.image_id])
    assert follower.poll_once() == len(new) + 1
    held = set(compact.image_id_array().tolist())
    assert {r.image.image_id.bytes for r in new} <= held
    assert gone.image_id.bytes not in held
    top = compact.search(new[0].vector, ScoreOptions(k=1))
    assert top[0].listing_id == new[0].image.listing_id
    assert follower.poll_once() == 0


def test_build_refuses_an_empty_store(sqlite_store: SQLiteStore) -> None:
    sqlite_store.put_model(MODEL)
    with pytest.raises(ValueError, match="no vectors"):
        build_compact(sqlite_store, MODEL, SearchSettings())
