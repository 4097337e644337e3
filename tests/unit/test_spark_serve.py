"""The Spark search service's parts that need no Spark: blocks, the pass scorer, the merge,
parsing queries, the fresh set and the metrics endpoint."""

from __future__ import annotations

import socket
import urllib.request
import uuid

import numpy as np
import pytest

from schemas.codec import l2_normalise
from schemas.records import Extracted, FeatureBatch, ImageRecord, ModelInfo, StockLevel, as_uuid
from search import scoring
from search.scoring import ScoreOptions, SearchRequest
from search.spark.batch import in_stock, result_rows
from search.spark.blocks import blocks_of
from search.spark.cache import PassScorer, top_k
from search.spark.fresh import FreshSet
from search.spark.messages import SearchMessage
from search.spark.metrics import ServeMetrics
from search.spark.serve import QueryError, parse_query
from store import Store

DIM = 8
MODEL = ModelInfo("vgg16_fc7", "test", DIM, "float16", "random:test")


def batch(listings: int, seed: int = 1) -> FeatureBatch:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, listings)
    lids = np.repeat(np.array([uuid.uuid4().bytes for _ in range(listings)], dtype="S16"), sizes)
    iids = np.array([uuid.uuid4().bytes for _ in range(len(lids))], dtype="S16")
    order = rng.permutation(len(lids))  # rows in no particular order, as a scan may give them
    return FeatureBatch(lids[order], iids[order], l2_normalise(rng.normal(size=(len(lids), DIM))))


def test_blocks_hold_whole_listings_sorted_and_bounded() -> None:
    fb = batch(60)
    blocks = list(blocks_of(fb, "float16", 20))
    assert len(blocks) > 3 and sum(b.rows for b in blocks) == len(fb)
    seen: set[bytes] = set()
    for b in blocks:
        assert b.vectors.dtype == np.float16 and b.rows < 20 + 5
        listing_rows = np.repeat(b.listing_ids, np.diff(np.append(b.starts, b.rows)))
        assert (np.lexsort((b.image_ids, listing_rows)) == np.arange(b.rows)).all()
        assert not seen & set(b.listing_ids.tolist())  # a listing never split across blocks
        seen |= set(b.listing_ids.tolist())


def test_a_pass_over_blocks_is_the_engines_ranking_of_everything() -> None:
    fb = batch(80)
    rng = np.random.default_rng(2)
    queries = l2_normalise(rng.normal(size=(3, DIM))).astype(np.float32)
    requests = (
        SearchRequest(queries[0], ScoreOptions(k=7)),
        SearchRequest(queries[1], ScoreOptions(k=5, aggregation="mean_top_n", top_n=2), in_stock_only=True),
        SearchRequest(queries[2], ScoreOptions(k=9, aggregation="count_above", threshold=0.1)),
    )
    in_stock = np.sort(np.unique(fb.listing_ids)[::2])
    split = PassScorer(queries, requests, in_stock=in_stock).best(blocks_of(fb, "float16", 15))
    [whole] = blocks_of(fb, "float16", len(fb))
    for j, r in enumerate(requests):
        allowed = np.isin(whole.listing_ids, in_stock) if r.in_stock_only else None
        scores = scoring.ranked_each(
            PassScorer(queries, requests).score_matrix(whole)[[j]],
            whole.starts,
            whole.listing_ids,
            whole.image_ids,
            [r],
            allowed,
        )[0]
        assert split[j] == scores


def test_hidden_listings_are_never_ranked() -> None:
    fb = batch(30)
    q = l2_normalise(np.ones((1, DIM))).astype(np.float32)
    requests = (SearchRequest(q[0], ScoreOptions(k=30)),)
    everything = PassScorer(q, requests).best(blocks_of(fb, "float16", 10))[0]
    hidden = np.sort(np.array([everything[0].listing_id.bytes], dtype="S16"))
    rest = PassScorer(q, requests, hidden=hidden).best(blocks_of(fb, "float16", 10))[0]
    assert rest == everything[1:]


def test_top_k_orders_by_score_then_listing_id() -> None:
    a, b, c = (scoring.RankedListing(uuid.UUID(int=i), s, ()) for i, s in ((2, 0.5), (1, 0.5), (3, 0.9)))
    assert top_k([[a], [b, c]], 2) == [c, b]


def test_rows_carry_live_stock_and_the_filter_reads_listings_with_stock(sqlite_store: Store) -> None:
    empty, stocked, unknown = (uuid.uuid4() for _ in range(3))
    sqlite_store.put_stock([StockLevel(empty, 0, uuid.uuid4()), StockLevel(stocked, 4, uuid.uuid4())])
    ranked = [scoring.RankedListing(x, 0.5, ()) for x in (stocked, unknown, empty)]
    names = {stocked: "stocked"}
    rows = result_rows(ranked, names, sqlite_store.get_stock([stocked, unknown, empty]))
    assert [(r.listing_id, r.inventory, r.listing_name) for r in rows] == [
        (stocked, 4, "stocked"),
        (unknown, None, ""),
        (empty, 0, ""),
    ]
    assert in_stock(sqlite_store).tolist() == [stocked.bytes]


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        (b"x", b"{}", "not a search message"),
        (
            None,
            SearchMessage.of(uuid.uuid4(), "other", SearchRequest(np.ones(DIM, np.float32))).value(),
            "not served",
        ),
        (
            None,
            SearchMessage.of(uuid.uuid4(), MODEL.name, SearchRequest(np.ones(3, np.float32))).value(),
            "8 values",
        ),
        (
            None,
            SearchMessage.of(
                uuid.uuid4(), MODEL.name, SearchRequest(np.full(DIM, np.nan, np.float32))
            ).value(),
            "finite",
        ),
    ],
)
def test_a_query_that_cannot_be_answered_says_why(key: bytes | None, value: bytes, says: str) -> None:
    with pytest.raises(QueryError, match=says):
        parse_query(key, value, MODEL)


def test_a_good_query_keeps_its_options() -> None:
    request = SearchRequest(np.ones(DIM, np.float32), ScoreOptions(k=4, aggregation="count_above"), True)
    msg = SearchMessage.of(uuid.uuid4(), MODEL.name, request)
    q = parse_query(msg.key(), msg.value(), MODEL)
    assert q.query_id == msg.query_id and q.request.opts.k == 4 and q.request.in_stock_only


def test_fresh_set_holds_whole_listings_and_hides_them(sqlite_store: Store) -> None:
    listing = uuid.uuid4()
    images = [uuid.uuid4() for _ in range(3)]
    sqlite_store.put_model(MODEL)
    rows = [
        Extracted(
            ImageRecord(listing, i, "t://", "image/jpeg", 1, 1, 1), "l", MODEL.name, np.ones(DIM) / DIM**0.5
        )
        for i in images
    ]
    sqlite_store.write_extracted(rows, MODEL.dtype)
    sqlite_store.put_stock([StockLevel(listing, 1, uuid.uuid4())])
    fresh = FreshSet(sqlite_store, MODEL, "float16", 100)
    fresh.refresh([listing])
    snap = fresh.snapshot()
    assert [as_uuid(i) for i in snap.hidden] == [listing] and sum(b.rows for b in snap.blocks) == 3
    fresh.remove_images(listing, [images[0]])  # announced, still in the store
    assert fresh.rows == 2 and images[0].bytes not in fresh.snapshot().blocks[0].image_ids.tolist()
    assert fresh.settled() == {}  # the store still holds the removed image: not settled
    sqlite_store.delete_images(listing, [images[0]])
    settled = fresh.settled()
    assert list(settled) == [listing]
    assert fresh.forget(settled) == 1 and len(fresh) == 0
    fresh.remove_listing(listing)
    assert fresh.rows == 0 and len(fresh.snapshot().hidden) == 1


def test_metrics_are_served() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = ServeMetrics()
    metrics.serve(port, "127.0.0.1")
    metrics.cache(100, 20, 4, 6)
    metrics.batch(8, 0.25)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "lookalike_spark_serve_vectors 100.0" in text
    assert "lookalike_spark_serve_batch_size_count 1.0" in text
    assert metrics.totals.queries == 8 and metrics.totals.last_pass_s == 0.25
