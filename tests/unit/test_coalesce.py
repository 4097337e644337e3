"""Coalescing (search/coalesce.py) and the service's shared passes over a real SQLite store:
a lone item starts a pass at once, what waits during a pass shares the next, the limit
refuses, errors reach their own items; and a batch of mixed queries (options, exclusions,
stock filter, min_score; exact, approximate and compact tiers; uploads through the CNN) gets
exactly the answers each query gets alone. Batches are forced by holding a pass with an event,
never by timing."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, cast

import numpy as np
import pytest
import torch

from config.settings import SearchSettings
from extract.decode import DecodeError
from extract.model import SPECS, FeatureModel
from schemas.codec import l2_normalise
from schemas.records import Extracted, FeatureBatch, ImageRecord, QueryAnswer, StockLevel, id_array
from search import coalesce
from search.coalesce import Coalescer, Overloaded
from search.engine import VectorIndex
from search.loader import load_index
from search.scoring import Aggregation, ScoreOptions, SearchRequest
from search.service import Query, SearchService
from search.tier import SearchIndex, query_chunks
from store.sqlite import SQLiteStore
from tests.conftest import jpeg_bytes, tiny_model

MODEL = tiny_model().info
DIM = MODEL.dim
WAIT_S = 60  # a bound on waits for another thread; never reached when things work


# -- the coalescer alone -------------------------------------------------------------------
class Held:
    """A pass function whose first pass waits for ``release``; records every batch."""

    def __init__(self, hold: bool = True) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.batches: list[list[int]] = []
        if not hold:
            self.release.set()

    def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        self.entered.set()
        assert self.release.wait(WAIT_S)
        return [ValueError(f"odd {i}") if i < 0 else i * 10 for i in items]


class Sizes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []

    def observe_pass(self, stage: str, size: int, waits: Sequence[float], seconds: float) -> None:
        assert seconds >= 0 and all(w >= 0 for w in waits)
        self.seen.append((stage, size, len(waits)))


def wait_for(what: Callable[[], bool]) -> None:
    done = threading.Event()
    for _ in range(WAIT_S * 100):
        if what():
            return
        done.wait(0.01)
    raise AssertionError("never happened")


def test_a_lone_item_starts_a_pass_at_once_and_waiting_items_share_the_next() -> None:
    run = Held()
    coalescer: Coalescer[int, int] = Coalescer("search", run, 3)
    sizes = Sizes()
    coalescer.observers.append(sizes)
    first = coalescer.submit(1)
    assert run.entered.wait(WAIT_S)  # nothing else waits: the pass started without delay
    rest = [coalescer.submit(i) for i in (2, 3, 4, 5)]
    assert coalescer.waiting == 4
    run.release.set()
    assert [f.result(WAIT_S) for f in [first, *rest]] == [10, 20, 30, 40, 50]
    assert run.batches == [[1], [2, 3, 4], [5]]  # at most max_batch a pass, oldest first
    assert sizes.seen == [("search", 1, 1), ("search", 3, 3), ("search", 1, 1)]
    coalescer.close(WAIT_S)


def test_past_the_limit_items_are_refused_not_queued() -> None:
    run = Held()
    coalescer: Coalescer[int, int] = Coalescer("search", run, 8)
    running = coalescer.submit(1, limit=2)
    assert run.entered.wait(WAIT_S)
    queued = [coalescer.submit(i, limit=2) for i in (2, 3)]
    with pytest.raises(Overloaded, match="2 search requests already wait"):
        coalescer.submit(4, limit=2)
    unbounded = coalescer.submit(5)  # no limit given: queued
    run.release.set()
    assert [f.result(WAIT_S) for f in [running, *queued, unbounded]] == [10, 20, 30, 50]
    assert run.batches == [[1], [2, 3, 5]]


def test_errors_reach_their_own_items_and_cancelled_items_are_dropped() -> None:
    run = Held()
    coalescer: Coalescer[int, int] = Coalescer("search", run, 8)
    first = coalescer.submit(1)
    assert run.entered.wait(WAIT_S)
    bad, good, gone = coalescer.submit(-1), coalescer.submit(2), coalescer.submit(3)
    assert gone.cancel()
    run.release.set()
    with pytest.raises(ValueError, match="odd -1"):
        bad.result(WAIT_S)
    assert (first.result(WAIT_S), good.result(WAIT_S)) == (10, 20)
    assert run.batches == [[1], [-1, 2]]

    def broken(items: list[int]) -> list[int | BaseException]:
        raise OSError("the pass failed")

    failing: Coalescer[int, int] = Coalescer("search", broken, 8)
    with pytest.raises(OSError, match="the pass failed"):
        failing.submit(1).result(WAIT_S)
    with pytest.raises(OSError, match="the pass failed"):  # the pass thread lives on
        failing.submit(2).result(WAIT_S)


def test_an_idle_pass_thread_ends_and_the_next_item_starts_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coalesce, "IDLE_S", 0.01)
    coalescer: Coalescer[int, int] = Coalescer("search", Held(hold=False), 8)
    assert coalescer.submit(1).result(WAIT_S) == 10
    wait_for(lambda: not coalescer.running)
    assert coalescer.submit(2).result(WAIT_S) == 20
    coalescer.close(WAIT_S)
    assert not coalescer.running
    with pytest.raises(RuntimeError, match="stopped"):
        coalescer.submit(3)


def test_query_chunks_bound_the_score_matrix() -> None:
    assert query_chunks(1000, 10, 1) == [slice(0, 10)]
    assert query_chunks(100_000, 7, 1) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 7)]
    assert query_chunks(10**9, 3, 1) == [slice(0, 1), slice(1, 2), slice(2, 3)]  # one query at least


# -- the service: batched answers are the answers alone ------------------------------------
class HeldIndex:
    """An index whose next batch waits for ``release`` (so what arrives meanwhile queues)."""

    def __init__(self, index: SearchIndex) -> None:
        self.index, self.hold = index, False
        self.entered, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.index, name)

    def __len__(self) -> int:
        return len(self.index)

    def search_requests(self, requests: Sequence[SearchRequest], only: Any = None) -> Any:
        if self.hold:
            self.hold = False
            self.entered.set()
            assert self.release.wait(WAIT_S)
        return self.index.search_requests(requests, only)


def rows_for(rng: np.random.Generator, listings: int) -> list[Extracted]:
    """Listings of 1-5 images near one of a few centres (close ties, shared candidates)."""
    middle = l2_normalise(rng.normal(size=(5, DIM)))
    out = []
    for _ in range(listings):
        listing, near = uuid.uuid4(), middle[rng.integers(5)]
        for _ in range(int(rng.integers(1, 6))):
            image = ImageRecord(listing, uuid.uuid4(), "test://", "image/jpeg", 1, 1, 1)
            vector = l2_normalise(near + rng.normal(scale=0.5, size=DIM) / np.sqrt(DIM))
            out.append(Extracted(image, f"listing-{listing.hex[:6]}", MODEL.name, vector))
    return out


@pytest.fixture
def catalogue(sqlite_store: SQLiteStore) -> list[Extracted]:
    rng = np.random.default_rng(7)
    rows = rows_for(rng, 80)
    listings = list(dict.fromkeys(r.image.listing_id for r in rows))
    sqlite_store.put_model(MODEL)
    sqlite_store.write_extracted(rows, MODEL.dtype)  # every third listing out of stock, some unknown
    sqlite_store.put_stock([StockLevel(lid, n % 3, uuid.uuid4()) for n, lid in enumerate(listings) if n % 7])
    return rows


TIERS = {
    "exact": SearchSettings(),
    "exact first pass": SearchSettings(exact_first_pass=True, candidates=8),
    "approximate": SearchSettings(
        mode="approximate", nlist=4, nprobe=1, candidates=12, train_rows_per_list=39
    ),
    "compact": SearchSettings(
        tier="compact", compact_dims=8, compact_nlist=4, compact_nprobe=1, compact_candidates=12
    ),
}


def mixed_queries(rows: list[Extracted]) -> list[tuple[Query, ScoreOptions, bool]]:
    rng = np.random.default_rng(1)
    vectors = l2_normalise(rng.normal(size=(6, DIM)))
    return [
        (Query(vector=vectors[0]), ScoreOptions(k=5), False),
        (Query(vector=vectors[1]), ScoreOptions(k=3, aggregation="mean_top_n", top_n=2), True),
        (Query(image_id=rows[4].image.image_id), ScoreOptions(k=7), False),  # leaves out its listing
        (Query(listing_id=rows[9].image.listing_id), ScoreOptions(k=4), True),
        (Query(vector=vectors[2]), ScoreOptions(k=10, aggregation="count_above", threshold=0.3), False),
        (Query(vector=vectors[3]), ScoreOptions(k=30, min_score=0.4), True),
        (Query(vector=vectors[4]), ScoreOptions(k=1, max_matches=1), True),
        (Query(image_id=rows[30].image.image_id), ScoreOptions(k=40), True),  # a wider candidate list
        (Query(vector=vectors[5]), ScoreOptions(k=5), False),
    ]


def fresh_and_removed(index: SearchIndex, rows: list[Extracted]) -> None:
    """Rows added after the load (the fresh tier) and a listing removed (tombstones)."""
    later = rows_for(np.random.default_rng(99), 6)
    index.add(
        FeatureBatch(
            id_array(r.image.listing_id for r in later),
            id_array(r.image.image_id for r in later),
            np.array([r.vector for r in later], dtype=np.float32),
        )
    )
    index.remove_listing(rows[-1].image.listing_id)


def results_of(answers: list[QueryAnswer]) -> list[tuple[Any, ...]]:
    return [a.results for a in answers]


@pytest.mark.parametrize("tier", TIERS)
def test_a_batch_of_mixed_queries_gets_the_answers_each_gets_alone(
    sqlite_store: SQLiteStore, catalogue: list[Extracted], tier: str
) -> None:
    index = load_index(sqlite_store, MODEL, TIERS[tier])
    fresh_and_removed(index, catalogue)
    queries = mixed_queries(catalogue)
    alone_service = SearchService(sqlite_store, index)
    alone = [alone_service.search(q, opts, stock) for q, opts, stock in queries]
    assert all(a.results for a in alone[:5]) and len(alone_service.searches.observers) == 0

    held = HeldIndex(index)
    service = SearchService(sqlite_store, cast(SearchIndex, held))
    sizes = Sizes()
    service.observe(sizes)
    held.hold = True
    first = service.submit(*queries[0])
    assert held.entered.wait(WAIT_S)
    rest = [service.submit(q, opts, stock) for q, opts, stock in queries[1:]]
    held.release.set()
    together = [f.result(WAIT_S) for f in [first, *rest]]

    assert sizes.seen == [("search", 1, 1), ("search", len(queries) - 1, len(queries) - 1)]
    assert results_of(together) == results_of(alone)
    for answer in together:  # each written under its own query id, as alone
        stored = sqlite_store.read_query_results(answer.query_id)
        assert [(r.listing_id, r.inventory) for r in stored] == [
            (r.listing_id, r.inventory) for r in answer.results
        ]
    vectors = np.stack([service.request(q, opts, stock).vector for q, opts, stock in queries])
    many = service.search_many(vectors, ScoreOptions(k=5))  # a batch given at once: one pass
    assert results_of(many) == results_of(
        [alone_service.search_vector(v, ScoreOptions(k=5)) for v in vectors]
    )


def test_an_exact_batch_scored_in_chunks_gets_the_answers_alone() -> None:
    rng = np.random.default_rng(4)
    n = 40_000
    listings = np.sort(id_array(uuid.UUID(int=int(i)) for i in rng.integers(1, 12_000, size=n)))
    images = id_array(uuid.uuid4() for _ in range(n))
    index = VectorIndex(MODEL, SearchSettings(batch_max_mb=1))  # 1 MiB: 6 queries a chunk
    index.reset([FeatureBatch(listings, images, l2_normalise(rng.normal(size=(n, DIM))))])
    requests = [
        SearchRequest(v, ScoreOptions(k=int(k), aggregation=agg), exclude=frozenset([uuid.UUID(int=int(k))]))
        for v, k, agg in zip(
            l2_normalise(rng.normal(size=(16, DIM))),
            rng.integers(1, 20, 16),
            cast(list[Aggregation], ["max", "mean_top_n"] * 8),
            strict=True,
        )
    ]
    assert len(query_chunks(len(index), len(requests), 1)) == 3
    assert index.search_requests(requests) == [index.search_requests([r])[0] for r in requests]


# -- uploads share the CNN -----------------------------------------------------------------
class HeldModel(FeatureModel):
    """The tiny CNN, its next forward pass held until ``release``; counts the passes."""

    def __init__(self) -> None:
        base = tiny_model()
        super().__init__(SPECS[MODEL.name], base.net, MODEL, torch.device("cpu"))
        self.hold, self.passes = False, cast(list[int], [])
        self.entered, self.release = threading.Event(), threading.Event()

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        self.passes.append(len(batch))
        if self.hold:
            self.hold = False
            self.entered.set()
            assert self.release.wait(WAIT_S)
        return super().embed(batch)


def test_uploads_waiting_are_embedded_in_one_forward_pass_with_the_answers_alone(
    sqlite_store: SQLiteStore, catalogue: list[Extracted]
) -> None:
    model = HeldModel()
    service = SearchService(sqlite_store, load_index(sqlite_store, MODEL, SearchSettings()), lambda: model)
    uploads = [jpeg_bytes(seed, (80 + 8 * seed, 64)) for seed in range(5)]
    options = [(ScoreOptions(k=3 + i), i % 2 == 0) for i in range(5)]
    alone = [
        service.search(Query(image=u), opts, stock) for u, (opts, stock) in zip(uploads, options, strict=True)
    ]
    assert model.passes == [1] * 5

    model.hold, model.passes = True, []
    first = service.submit(Query(image=uploads[0]), *options[0])
    assert model.entered.wait(WAIT_S)
    rest: list[Future[QueryAnswer]] = [
        service.submit(Query(image=u), opts, stock)
        for u, (opts, stock) in zip(uploads[1:], options[1:], strict=True)
    ]
    broken = service.submit(Query(image=b"not an image at all"), ScoreOptions())
    model.release.set()
    together = [f.result(WAIT_S) for f in [first, *rest]]
    with pytest.raises(DecodeError):
        broken.result(WAIT_S)

    assert model.passes == [1, 4]  # the four that waited (and decoded), in one forward pass
    assert results_of(together) == results_of(alone)  # the tiny CNN's vectors do not depend on the batch
