"""One contract for every store backend: SQLite always, Cassandra when
``LOOKALIKE_TEST_CASSANDRA=host[:port]`` points at a cluster.

On Cassandra all tests share one keyspace per test session (dropped at the end), so each
test works on its own ids and its own model name and measures counts as differences.
The last section checks the parts of the Cassandra adapter that need no cluster.
"""

from __future__ import annotations

import itertools
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from cassandra.cqltypes import UUIDType
from cassandra.metadata import Murmur3Token
from pydantic import ValidationError

from config.cassandra import CassandraSettings
from schemas import codec
from schemas.records import Extracted, FeatureBatch, ImageRecord, ModelInfo, StockLevel
from store import ResultRow, Store, StoreError, StoreUnavailable, open_store
from store.cassandra import CassandraStore
from store.cassandra_scan import MAX_TOKEN, MIN_TOKEN, in_range, ring_page, shard_ranges, token_of
from store.cassandra_url import parse_url
from store.migrations import load_migrations, split_statements
from tests.conftest import CASSANDRA_ENV, SKIP_CASSANDRA

pytestmark = pytest.mark.integration

COUNTED = ("features", "images", "images_by_id", "listings", "stock_level", "models")


# -- backends ------------------------------------------------------------------------------
@dataclass
class Backend:
    name: str
    open: Callable[[], Store]  # the shared database, schema applied
    open_fresh: Callable[[], Store]  # a new, empty database without schema


@pytest.fixture(scope="session")
def cassandra_shared(cassandra_urls: Callable[[], str]) -> str:
    url = cassandra_urls()
    store = open_store(url)
    try:
        store.apply_schema()
    finally:
        store.close()
    return url


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "cassandra",
            marks=[
                pytest.mark.cassandra,
                pytest.mark.skipif(not os.environ.get(CASSANDRA_ENV), reason=SKIP_CASSANDRA),
            ],
        ),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        shared = f"sqlite:///{tmp_path / 'shared.db'}"

        def open_shared() -> Store:
            store = open_store(shared)
            store.apply_schema()
            return store

        fresh = iter(range(1_000_000))
        return Backend(
            "sqlite", open_shared, lambda: open_store(f"sqlite:///{tmp_path / f'{next(fresh)}.db'}")
        )
    url = request.getfixturevalue("cassandra_shared")
    new_url = request.getfixturevalue("cassandra_urls")
    return Backend("cassandra", lambda: open_store(url), lambda: open_store(new_url()))


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    opened = backend.open()
    yield opened
    opened.close()


# -- data ----------------------------------------------------------------------------------
def new_model(dim: int = 16, dtype: str = "float16") -> ModelInfo:
    """A model name of its own per test, so tests sharing a keyspace do not see each other."""
    return ModelInfo(f"test-{uuid.uuid4().hex[:12]}", "1", dim, dtype, "random:seed=0")


def vectors(n: int, dim: int, seed: int = 0) -> npt.NDArray[np.float32]:
    return codec.l2_normalise(np.random.default_rng(seed).standard_normal((n, dim)))


def extracted(
    model: ModelInfo, images_per_listing: Sequence[int], seed: int = 0, name: str = "listing"
) -> list[Extracted]:
    """Images of new listings, ``images_per_listing[i]`` of them for listing i."""
    vecs = iter(vectors(sum(images_per_listing), model.dim, seed))
    out: list[Extracted] = []
    for i, count in enumerate(images_per_listing):
        listing = uuid.uuid4()
        for j in range(count):
            image = ImageRecord(
                listing,
                uuid.uuid4(),
                f"file:///img/{i}/{j}.jpg",
                "image/jpeg",
                640,
                480,
                1000 + j,
                datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
            )
            out.append(Extracted(image, f"{name} {i}", model.name, next(vecs)))
    return out


def stored(vector: npt.NDArray[np.float32], dtype: str) -> npt.NDArray[np.float32]:
    """What a backend must give back for a vector: its codec-quantised value."""
    return codec.decode(codec.encode(vector, dtype), dtype, vector.shape[-1])


def uuids(ids: npt.NDArray[np.bytes_]) -> list[uuid.UUID]:
    """S16 arrays drop trailing NUL bytes when indexed; read the raw 16-byte records."""
    raw = np.ascontiguousarray(ids, dtype="S16").tobytes()
    return [uuid.UUID(bytes=raw[i : i + 16]) for i in range(0, len(raw), 16)]


def rows_of(batches: Sequence[FeatureBatch]) -> list[tuple[uuid.UUID, uuid.UUID, bytes]]:
    """(listing, image, vector bytes) in stream order."""
    out = []
    for b in batches:
        for lid, iid, vec in zip(uuids(b.listing_ids), uuids(b.image_ids), b.vectors, strict=True):
            out.append((lid, iid, vec.tobytes()))
    return out


def counts(store: Store) -> dict[str, int]:
    return {table: store.count(table) for table in COUNTED}


# -- schema --------------------------------------------------------------------------------
def test_apply_schema_twice_applies_nothing_the_second_time(backend: Backend) -> None:
    store = backend.open_fresh()
    try:
        first = store.apply_schema()
        second = store.apply_schema()
        versions = store.applied_versions()
        tables = counts(store)
    finally:
        store.close()
    assert first, "a new database must get at least one schema version"
    assert first[0] == load_migrations()[0].version
    assert second == []
    assert [v for v, _ in versions] == first
    for _, applied_at in versions:
        age = datetime.now(UTC) - datetime.fromisoformat(applied_at)
        assert timedelta(0) <= age < timedelta(minutes=10), applied_at
    assert tables == dict.fromkeys(COUNTED, 0)


# -- models --------------------------------------------------------------------------------
def test_models_put_get_replace(store: Store) -> None:
    model = new_model(dim=24, dtype="float32")
    assert store.get_model(model.name) is None
    store.put_model(model)
    assert store.get_model(model.name) == model
    newer = ModelInfo(model.name, "2", 24, "float32", "file:/w.pth")
    store.put_model(newer)
    assert store.get_model(model.name) == newer


# -- writes --------------------------------------------------------------------------------
def test_write_extracted_twice_changes_nothing(store: Store) -> None:
    model = new_model()
    batch = extracted(model, [3, 1, 2])
    before = counts(store)
    store.write_extracted(batch, model.dtype)
    once = counts(store)
    store.write_extracted(batch, model.dtype)
    twice = counts(store)
    added = {table: once[table] - before[table] for table in COUNTED}
    assert added == {
        "features": 6,
        "images": 6,
        "images_by_id": 6,
        "listings": 3,
        "stock_level": 0,
        "models": 0,
    }
    assert twice == once


def test_listing_features_reads_one_listing_of_one_model(store: Store) -> None:
    model, other = new_model(), new_model()
    batch = extracted(model, [4, 2, 3])
    store.write_extracted(batch, model.dtype)
    store.write_extracted(extracted(other, [1], seed=1), other.dtype)
    listing = batch[0].image.listing_id
    mine = sorted((e for e in batch if e.image.listing_id == listing), key=lambda e: e.image.image_id.bytes)

    got = store.listing_features(listing, model)

    assert uuids(got.listing_ids) == [listing] * 4
    assert uuids(got.image_ids) == [e.image.image_id for e in mine]  # sorted by id
    assert got.vectors.dtype == np.float32 and got.vectors.shape == (4, model.dim)
    np.testing.assert_array_equal(got.vectors, np.stack([stored(e.vector, model.dtype) for e in mine]))
    assert len(store.listing_features(listing, other)) == 0
    empty = store.listing_features(uuid.uuid4(), model)
    assert len(empty) == 0 and empty.vectors.shape == (0, model.dim)


def test_image_listing_and_image_record(store: Store) -> None:
    model = new_model()
    batch = extracted(model, [2, 1])
    store.write_extracted(batch, model.dtype)
    for e in batch:
        assert store.image_listing(e.image.image_id) == e.image.listing_id
        record = store.image_record(e.image.image_id)
        assert record is not None
        assert record.ingested_at.tzinfo is not None
        # Cassandra timestamps keep milliseconds.
        assert abs(record.ingested_at - e.image.ingested_at) < timedelta(milliseconds=1)
        assert record == ImageRecord(**{**vars(e.image), "ingested_at": record.ingested_at})
    assert store.image_listing(uuid.uuid4()) is None
    assert store.image_record(uuid.uuid4()) is None


def test_listing_images_are_one_partition(store: Store) -> None:
    model = new_model()
    batch = extracted(model, [3, 1])
    store.write_extracted(batch, model.dtype)
    listing = batch[0].image.listing_id
    images = sorted(store.listing_images(listing), key=lambda i: i.image_id.bytes)
    own = sorted((e.image for e in batch if e.image.listing_id == listing), key=lambda i: i.image_id.bytes)
    assert [(i.image_id, i.uri) for i in images] == [(i.image_id, i.uri) for i in own]
    assert store.listing_images(uuid.uuid4()) == []


def test_listing_names_of_known_listings_latest_name_wins(store: Store) -> None:
    model = new_model()
    batch = extracted(model, [1, 2], name="old")
    store.write_extracted(batch, model.dtype)
    first, second = batch[0].image.listing_id, batch[1].image.listing_id
    renamed = [Extracted(batch[0].image, "new name", model.name, batch[0].vector)]
    store.write_extracted(renamed, model.dtype)

    names = store.listing_names([first, second, second, uuid.uuid4()])

    assert dict(names) == {first: "new name", second: "old 1"}
    assert dict(store.listing_names([])) == {}


def test_existing_images_per_model(store: Store) -> None:
    model, other = new_model(), new_model()
    batch = extracted(model, [2, 1])
    store.write_extracted(batch, model.dtype)
    known = [e.image.image_id for e in batch]
    unknown = uuid.uuid4()

    assert store.existing_images([*known, unknown], model.name) == set(known)
    assert store.existing_images([*known, unknown], other.name) == set()
    assert store.existing_images([], model.name) == set()


# -- the catalogue, page by page ------------------------------------------------------------
def catalogue_order(store: Store) -> Callable[[uuid.UUID], tuple[int, bytes]]:
    """The order a backend pages listings in: id bytes (SQLite), the token ring (Cassandra)."""
    if isinstance(store, CassandraStore):
        return lambda i: (token_of(i.bytes), i.bytes)
    return lambda i: (0, i.bytes)


def walk(store: Store, limit: int, after: uuid.UUID | None = None) -> list[list[tuple[uuid.UUID, str]]]:
    pages = []
    while True:
        pages.append(store.listings_page(limit, after))
        if len(pages[-1]) < limit:
            return pages
        after = pages[-1][-1][0]


def test_listings_page_walks_the_catalogue_once_in_order(store: Store) -> None:
    model = new_model()
    batch = extracted(model, [1] * 22 + [3, 2], name="walked")
    store.write_extracted(batch, model.dtype)
    mine = {e.image.listing_id: e.listing_name for e in batch}

    pages = walk(store, 5)
    listed = [lid for page in pages for lid, _ in page]

    assert all(len(page) == 5 for page in pages[:-1]) and len(pages[-1]) < 5
    assert len(listed) == len(set(listed)), "a listing on two pages"
    assert listed == sorted(listed, key=catalogue_order(store)), "pages out of order"
    assert {lid: name for page in pages for lid, name in page if lid in mine} == mine
    assert [lid for page in walk(store, 7) for lid, _ in page] == listed  # any page size
    assert [lid for lid, _ in store.listings_page(len(listed) + 10)] == listed
    with pytest.raises(ValueError, match="limit"):
        store.listings_page(0)


def test_listings_page_goes_on_after_a_listing_removed_meanwhile(store: Store) -> None:
    model = new_model()
    batch = extracted(model, [1] * 12, name="removed")
    store.write_extracted(batch, model.dtype)
    listed = [lid for page in walk(store, 50) for lid, _ in page]
    mine = [lid for lid in listed if lid in {e.image.listing_id for e in batch}]
    cursor = mine[5]

    store.delete_listing(cursor)

    at = listed.index(cursor)
    assert [lid for lid, _ in store.listings_page(4, cursor)] == listed[at + 1 : at + 5]
    assert cursor not in [lid for page in walk(store, 3) for lid, _ in page]


def test_listings_images_of_many_listings_by_image_id(store: Store) -> None:
    model = new_model()
    batch = extracted(model, [3, 1, 2])
    store.write_extracted(batch, model.dtype)
    first, _, third = dict.fromkeys(e.image.listing_id for e in batch)
    unknown = uuid.uuid4()

    found = store.listings_images([third, first, unknown, first])

    def own(listing: uuid.UUID) -> list[tuple[uuid.UUID, str]]:
        images = sorted(
            (e.image for e in batch if e.image.listing_id == listing), key=lambda i: i.image_id.bytes
        )
        return [(i.image_id, i.uri) for i in images]

    assert set(found) == {first, third}
    assert {lid: [(i.image_id, i.uri) for i in images] for lid, images in found.items()} == {
        first: own(first),
        third: own(third),
    }
    assert dict(store.listings_images([])) == {}


# -- removals ------------------------------------------------------------------------------
def deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {table: before[table] - after[table] for table in COUNTED}


def test_delete_images_removes_them_for_every_model_and_nothing_else(store: Store) -> None:
    model, other = new_model(), new_model()
    batch = extracted(model, [3, 2])
    store.write_extracted(batch, model.dtype)
    gone = batch[0]
    store.write_extracted([Extracted(gone.image, "listing 0", other.name, gone.vector)], other.dtype)
    listing = gone.image.listing_id
    before = counts(store)

    store.delete_images(listing, [gone.image.image_id, uuid.uuid4()])
    store.delete_images(listing, [gone.image.image_id])  # idempotent

    assert deltas(before, counts(store)) == {
        "features": 2,  # both models' vectors
        "images": 1,
        "images_by_id": 1,
        "listings": 0,
        "stock_level": 0,
        "models": 0,
    }
    assert store.image_listing(gone.image.image_id) is None
    assert store.image_record(gone.image.image_id) is None
    rest = sorted(e.image.image_id for e in batch[1:3])
    assert sorted(uuids(store.listing_features(listing, model).image_ids)) == rest
    assert store.existing_images([e.image.image_id for e in batch], model.name) == {
        e.image.image_id for e in batch[1:]
    }
    assert len(store.listing_features(listing, other)) == 0


def test_delete_listing_removes_its_images_vectors_name_and_stock(store: Store) -> None:
    model = new_model()
    batch = extracted(model, [3, 2])
    store.write_extracted(batch, model.dtype)
    gone, kept = batch[0].image.listing_id, batch[3].image.listing_id
    store.put_stock([StockLevel(gone, 4, uuid.uuid4()), StockLevel(kept, 1, uuid.uuid4())])
    before = counts(store)

    store.delete_listing(gone)
    store.delete_listing(gone)  # idempotent
    store.delete_listing(uuid.uuid4())  # unknown: nothing to do

    assert deltas(before, counts(store)) == {
        "features": 3,
        "images": 3,
        "images_by_id": 3,
        "listings": 1,
        "stock_level": 1,
        "models": 0,
    }
    assert store.listing_images(gone) == []
    assert dict(store.listing_names([gone, kept])) == {kept: "listing 1"}
    assert set(store.get_stock([gone, kept])) == {kept}
    assert all(store.image_listing(e.image.image_id) is None for e in batch[:3])
    assert {lid for lid, _, _ in rows_of(list(store.scan_features(model)))} == {kept}


# -- scans ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shards", [1, 3, 7])
def test_shards_together_hold_every_row_once(store: Store, shards: int) -> None:
    model = new_model(dim=8)
    layout = [random.Random(shards).randint(1, 4) for _ in range(60)]
    batch = extracted(model, layout, seed=shards)
    store.write_extracted(batch, model.dtype)
    expected = {
        (e.image.listing_id, e.image.image_id, stored(e.vector, model.dtype).tobytes()) for e in batch
    }

    per_shard = []
    for shard in range(shards):
        batches = list(store.scan_features(model, shard, shards, batch_size=7))
        assert all(0 < len(b) <= 7 for b in batches)
        assert all(b.vectors.shape == (len(b), model.dim) for b in batches)
        per_shard.append(rows_of(batches))

    everything = [row for rows in per_shard for row in rows]
    assert len(everything) == len(expected), "a row was read twice or missed"
    assert set(everything) == expected
    owner: dict[uuid.UUID, int] = {}
    for shard, rows in enumerate(per_shard):
        listings = [lid for lid, _, _ in rows]
        runs = [lid for i, lid in enumerate(listings) if i == 0 or listings[i - 1] != lid]
        assert len(runs) == len(set(runs)), "a listing's rows are not contiguous in a shard"
        for lid in runs:
            assert owner.setdefault(lid, shard) == shard, "a listing spans two shards"
    if shards > 1:
        assert sum(1 for rows in per_shard if rows) > 1, "all listings fell into one shard"


def test_scan_rejects_a_bad_shard(store: Store) -> None:
    with pytest.raises(ValueError, match="shard"):
        list(store.scan_features(new_model(), shard=3, shards=3))


def test_models_side_by_side(store: Store) -> None:
    small, large = new_model(dim=8, dtype="float16"), new_model(dim=12, dtype="float32")
    store.put_model(small)
    store.put_model(large)
    both = extracted(small, [2, 2], seed=1)
    only_large = extracted(large, [3], seed=2)
    # the same images get vectors of the second model too
    again = [
        Extracted(e.image, e.listing_name, large.name, v)
        for e, v in zip(both, vectors(len(both), large.dim, seed=3), strict=True)
    ]
    store.write_extracted(both, small.dtype)
    store.write_extracted(again + only_large, large.dtype)

    def scanned(model: ModelInfo) -> dict[uuid.UUID, bytes]:
        batches = list(store.scan_features(model))
        assert all(b.vectors.shape[1] == model.dim for b in batches)
        return {iid: vec for _, iid, vec in rows_of(batches)}

    small_rows, large_rows = scanned(small), scanned(large)
    assert small_rows == {e.image.image_id: stored(e.vector, "float16").tobytes() for e in both}
    assert large_rows == {e.image.image_id: stored(e.vector, "float32").tobytes() for e in again + only_large}
    listing = both[0].image.listing_id
    assert len(store.listing_features(listing, small)) == 2
    assert store.listing_features(listing, large).vectors.shape == (2, 12)
    assert store.get_model(small.name) == small and store.get_model(large.name) == large
    assert (store.count_features(small), store.count_features(large)) == (len(both), len(again + only_large))
    assert store.count_features(new_model()) == 0


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_ten_thousand_vectors_round_trip_bit_exact(store: Store, dtype: str) -> None:
    model = new_model(dim=64, dtype=dtype)
    batch = extracted(model, [4] * 2500, seed=7)
    for start in range(0, len(batch), 1000):
        store.write_extracted(batch[start : start + 1000], dtype)

    got = FeatureBatch.concat(list(store.scan_features(model, batch_size=4096)), model.dim)

    assert len(got) == 10_000
    order = {iid: i for i, iid in enumerate(uuids(got.image_ids))}
    assert len(order) == 10_000
    sent = np.stack([stored(e.vector, dtype) for e in batch])
    back = got.vectors[[order[e.image.image_id] for e in batch]]
    assert back.dtype == np.float32
    assert np.array_equal(back.view(np.uint32), sent.view(np.uint32))  # bit for bit
    if dtype == "float32":
        assert np.array_equal(back, np.stack([e.vector for e in batch]))


# -- stock ---------------------------------------------------------------------------------
def test_stock_put_get_all(store: Store) -> None:
    levels = [StockLevel(uuid.uuid4(), n, uuid.uuid4()) for n in (0, 5, 12)]
    store.put_stock(levels)
    updated = StockLevel(levels[1].listing_id, 4, uuid.uuid4())
    store.put_stock([updated])
    unknown = uuid.uuid4()

    got = store.get_stock([levels[0].listing_id, levels[1].listing_id, unknown])

    assert dict(got) == {levels[0].listing_id: levels[0], updated.listing_id: updated}
    mine = {s.listing_id: s for s in store.all_stock() if s.listing_id in got or s == levels[2]}
    assert mine == {
        levels[0].listing_id: levels[0],
        updated.listing_id: updated,
        levels[2].listing_id: levels[2],
    }
    assert dict(store.get_stock([])) == {}


# -- query results -------------------------------------------------------------------------
def result_rows(n: int) -> list[ResultRow]:
    rng = random.Random(n)
    return [
        ResultRow(
            rng.uniform(-1, 1),
            uuid.uuid4(),
            f"listing {i}",
            None if i % 3 == 0 else i,
            tuple((uuid.uuid4(), rng.uniform(-1, 1)) for _ in range(i % 3 + 1)),
        )
        for i in range(n)
    ]


def f32(x: float) -> float:
    return float(np.float32(x))


def test_query_results_come_back_best_first(store: Store) -> None:
    query, rows = uuid.uuid4(), result_rows(20)
    store.write_query_results(query, rows)
    expected = [
        ResultRow(
            f32(r.score), r.listing_id, r.listing_name, r.inventory, tuple((i, f32(s)) for i, s in r.matches)
        )
        for r in sorted(rows, key=lambda r: -f32(r.score))
    ]

    assert store.read_query_results(query) == expected
    assert store.read_query_results(query, k=5) == expected[:5]
    assert store.read_query_results(query, k=100) == expected
    assert store.read_query_results(uuid.uuid4()) == []


def test_many_answers_are_written_in_one_call(store: Store) -> None:
    answers = [(uuid.uuid4(), result_rows(n)) for n in (5, 1, 0, 12)]
    before = store.count("query_results")
    store.write_many_query_results(answers)
    store.write_many_query_results([])  # nothing to write: nothing happens

    assert store.count("query_results") == before + 18
    for query, rows in answers:
        got = store.read_query_results(query)
        assert [(r.listing_id, r.score) for r in got] == [
            (r.listing_id, f32(r.score)) for r in sorted(rows, key=lambda r: -f32(r.score))
        ]


def test_query_results_expire_after_their_ttl(store: Store) -> None:
    query = uuid.uuid4()
    store.write_query_results(query, result_rows(3), ttl=1)
    assert len(store.read_query_results(query)) == 3
    time.sleep(2.5)
    assert store.read_query_results(query) == []


# -- count ---------------------------------------------------------------------------------
def test_count_follows_writes_and_rejects_unknown_tables(store: Store) -> None:
    before = store.count("query_results")
    store.write_query_results(uuid.uuid4(), result_rows(4))
    assert store.count("query_results") == before + 4
    with pytest.raises(ValueError, match="table"):
        store.count("features; DROP TABLE features")


# -- the Cassandra adapter without a cluster -----------------------------------------------
def test_cassandra_url_parsing() -> None:
    target = parse_url("cassandra://h1,h2:9043,[::1]/Lookalike?dc=dc1")
    assert target.hosts == (("h1", 9043), ("h2", 9043), ("::1", 9043))
    assert (target.keyspace, target.dc) == ("lookalike", "dc1")
    assert parse_url("cassandra://h1/ks").hosts == (("h1", 9042),)
    assert parse_url("cassandra://h1/ks").dc is None
    for bad in (
        "cassandra://h1",  # no keyspace
        "cassandra://h1/system_auth",
        "cassandra://h1/ks;drop",
        "cassandra://h1:x/ks",
        "cassandra://user:pw@h1/ks",
        "cassandra://h1/ks?consistency=ONE",
        "sqlite:///ks",
    ):
        with pytest.raises(StoreError):
            parse_url(bad)


def test_cassandra_shard_ranges_cover_the_ring_once() -> None:
    tokens = [Murmur3Token.hash_fn(uuid.uuid4().bytes) for _ in range(2000)] + [MAX_TOKEN]
    for shards in (1, 3, 7):
        ranges = [
            shard_ranges(s, shards, splits)
            for s, splits in zip(range(shards), [1, 5, 2, 9, 1, 3, 4], strict=False)
        ]
        flat = [r for rs in ranges for r in rs]
        assert flat[0][0] == MIN_TOKEN and flat[-1][1] == MAX_TOKEN
        assert all(a[1] == b[0] for a, b in itertools.pairwise(flat)), "gap or overlap"
        for token in tokens:
            assert sum(in_range(token, r) for r in flat) == 1
    assert Murmur3Token.hash_fn(b"") != MIN_TOKEN  # MIN_TOKEN is never a partition's token
    with pytest.raises(ValueError):
        shard_ranges(2, 2)


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 40])
def test_ring_pages_are_exact_where_keys_share_a_token(limit: int) -> None:
    """A fake ring (a cluster cannot be made to collide on a 64-bit token): runs of keys that
    share a token, some longer than a page, are each listed once, in ring order."""
    rng = random.Random(limit)
    tokens = [MIN_TOKEN + 1, -5, -5, 0, 0, 0, 0, 0, 0, 0, 7, 7, MAX_TOKEN] + [
        rng.randint(-99, 99) for _ in range(20)
    ]
    ring = sorted(
        ((t, uuid.UUID(int=rng.getrandbits(128)), "") for t in tokens), key=lambda r: (r[0], r[1].bytes)
    )
    reads: list[int] = []

    def read(token: int, n: int) -> list[tuple[int, uuid.UUID, str]]:
        reads.append(n)
        return [r for r in ring if r[0] >= token][:n]

    listed, after = [], None
    while True:
        page = ring_page(read, limit, after)
        listed.extend(page)
        if len(page) < limit:
            break
        after = (page[-1][0], page[-1][1].bytes)
    assert listed == ring
    assert max(reads) <= 2 * max(limit + 1, 8), "reads grow only while keys share a token"
    # a cursor whose partition is gone: the pages go on from where it was
    gone = ring[10]
    assert ring_page(read, 3, (gone[0], gone[1].bytes)) == ring[11:14]
    # a uuid partition key is routed by its 16 bytes: the token the driver routes it by
    key = uuid.uuid4()
    assert token_of(key.bytes) == Murmur3Token.from_key(UUIDType.serialize(key, 4)).value


def test_cql_files_split_into_statements() -> None:
    assert split_statements(
        "-- a; b\nCREATE TABLE t (a text); /* x; */ INSERT INTO t (a) VALUES ('p;q--''r');\n"
    ) == [
        "CREATE TABLE t (a text)",
        "INSERT INTO t (a) VALUES ('p;q--''r')",
    ]
    migrations = load_migrations()
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    assert all(s.upper().startswith("CREATE ") for m in migrations for s in m.statements)
    assert all(len(m.checksum) == 64 for m in migrations)


def test_cassandra_settings_keep_the_password_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_CASSANDRA_USERNAME", "lookalike")
    monkeypatch.setenv("LOOKALIKE_CASSANDRA_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("LOOKALIKE_CASSANDRA_REPLICATION", '{"class": "NetworkTopologyStrategy", "dc1": 3}')
    settings = CassandraSettings()
    assert settings.password.get_secret_value() == "hunter2-secret"
    assert settings.replication == {"class": "NetworkTopologyStrategy", "dc1": "3"}
    assert settings.replication_cql() == "{'class': 'NetworkTopologyStrategy', 'dc1': '3'}"
    store = CassandraStore.__new__(CassandraStore)  # repr only: no cluster needed
    store.url, store.settings = "cassandra://h1/ks", settings
    for text in (repr(settings), str(settings), settings.model_dump_json(), repr(store)):
        assert "hunter2" not in text
    with pytest.raises(ValidationError):
        CassandraSettings.model_validate({"read_consistency": "SOMETIMES"})
    with pytest.raises(ValidationError):
        CassandraSettings(replication={"class": "SimpleStrategy", "dc1": "3"})


def test_cassandra_unreachable_is_store_unavailable() -> None:
    settings = CassandraSettings(connect_timeout_s=1, retry_attempts=2, retry_backoff_s=0.01)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unreachable"):
        CassandraStore("cassandra://127.0.0.1:9/lookalike", settings)  # nothing listens on 9
    assert time.monotonic() - started < 30
