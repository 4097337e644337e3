"""``Store.listings_features``, the batched listing read the compact tier rescores from, held to
one contract on every reachable backend (SQLite always, Cassandra with
``LOOKALIKE_TEST_CASSANDRA``), and the compact tier served from a store end to end."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from config.settings import SearchSettings
from schemas.records import FeatureBatch
from search.compact_build import build_compact
from search.engine import VectorIndex
from search.scoring import ScoreOptions
from store import Store
from tests.integration import test_store_contract as contract
from tests.integration.test_store_contract import extracted, new_model, rows_of, stored, uuids

# The contract suite's backends (SQLite, Cassandra when reachable), as fixtures of this module.
backend, cassandra_shared, store = contract.backend, contract.cassandra_shared, contract.store

pytestmark = pytest.mark.integration


def test_listings_features_reads_many_listings_of_one_model(store: Store) -> None:
    model, other = new_model(), new_model()
    batch = extracted(model, [4, 2, 3, 1])
    store.write_extracted(batch, model.dtype)
    store.write_extracted(extracted(other, [2], seed=1), other.dtype)
    listings = list(dict.fromkeys(e.image.listing_id for e in batch))
    asked = [listings[2], listings[0], uuid.uuid4(), listings[0], listings[3]]  # unknown and repeated

    got = store.listings_features(asked, model)

    mine = sorted(
        (e for e in batch if e.image.listing_id in {listings[0], listings[2], listings[3]}),
        key=lambda e: (e.image.listing_id.bytes, e.image.image_id.bytes),
    )
    assert uuids(got.listing_ids) == [e.image.listing_id for e in mine]
    assert uuids(got.image_ids) == [e.image.image_id for e in mine]
    assert got.vectors.dtype == np.float32 and got.vectors.shape == (8, model.dim)
    np.testing.assert_array_equal(got.vectors, np.stack([stored(e.vector, model.dtype) for e in mine]))
    for listing in listings:  # each listing as listing_features reads it
        one = store.listing_features(listing, model)
        rows = [r for r in rows_of([got]) if r[0] == listing]
        assert rows == [] or rows == rows_of([one])
    assert len(store.listings_features([], model)) == 0
    empty = store.listings_features([listings[0]], other)
    assert len(empty) == 0 and empty.vectors.shape == (0, model.dim)


def test_listings_features_many_listings_in_one_call(store: Store) -> None:
    model = new_model(dim=8)
    batch = extracted(model, [2] * 600)  # more listings than one IN list of 500
    store.write_extracted(batch, model.dtype)
    listings = list(dict.fromkeys(e.image.listing_id for e in batch))
    got = store.listings_features(listings, model)
    assert len(got) == 1200
    assert set(uuids(got.listing_ids)) == set(listings)
    keys = [(a.bytes, b.bytes) for a, b in zip(uuids(got.listing_ids), uuids(got.image_ids), strict=True)]
    assert keys == sorted(keys)


def test_compact_tier_serves_from_the_store_as_memory_does(store: Store) -> None:
    model = new_model(dim=24)
    batch = extracted(model, [1, 2, 3, 4] * 30)
    store.put_model(model)
    store.write_extracted(batch, model.dtype)
    settings = SearchSettings(compact_dims=6, compact_candidates=1000, compact_nlist=4, compact_nprobe=4)
    compact = build_compact(store, model, settings)
    memory = VectorIndex(model, SearchSettings())
    memory.reset(list(store.scan_features(model)))
    assert compact.recall_at_10 == 1.0
    queries = np.stack([stored(e.vector, model.dtype) for e in batch[::17]])
    for got, want in zip(
        compact.search_many(queries, ScoreOptions(k=8)),
        memory.search_many(queries, ScoreOptions(k=8)),
        strict=True,
    ):
        assert [r.listing_id for r in got] == [r.listing_id for r in want]
        np.testing.assert_allclose([r.score for r in got], [r.score for r in want], atol=1e-6)
    gone = batch[0].image
    store.delete_listing(gone.listing_id)
    compact.remove_listing(gone.listing_id)
    answer = compact.search(queries[0], ScoreOptions(k=5))
    assert gone.listing_id not in {r.listing_id for r in answer}
    assert isinstance(store.listings_features([gone.listing_id], model), FeatureBatch)
