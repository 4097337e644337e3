"""One batch of the Spark search service: a single pass over the cached blocks.

Every request of the batch is scored in the same pass (one matrix product per block), each with
its own options and exclusions; each partition keeps every request's top k; the driver's fresh
listings are scored on the driver and shipped with the writers; the candidates of a request meet
in one task of the next stage, which takes the global top k, joins the listings' names and live
stock and writes the request's rows to ``query_results`` (one write per query, from the
executors).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pyspark import Broadcast
from pyspark.sql import SparkSession

from schemas.records import StockLevel
from search.scoring import RankedListing, SearchRequest
from search.spark import resident
from search.spark.blocks import S16, Block
from search.spark.cache import NO_IDS, PassScorer, Ranked, VectorCache, top_k
from search.spark.resident import Resident
from store import ResultRow, Store, open_store


def in_stock(store: Store) -> S16:
    """Every listing with stock, sorted: read for a batch that filters on stock (the pass keeps
    only these listings for those queries)."""
    ids = [s.listing_id.bytes for s in store.all_stock() if s.inventory > 0]
    return np.sort(np.array(ids, dtype="S16"))


@dataclass(frozen=True)
class Fresh:
    """What the driver holds beside the cache: the current rows of the listings that changed
    since the load (scored here), and every listing the cache must not rank (those, and the
    removed ones)."""

    blocks: tuple[Block, ...] = ()
    hidden: S16 = field(default_factory=lambda: np.zeros(0, dtype="S16"))


@dataclass(frozen=True)
class PassTask:
    """Runs in each task of a pass: the resident blocks' candidates for every request (an empty
    list where none qualified, so that every request meets its driver's candidates in the
    writer)."""

    scorer: PassScorer
    in_stock: Broadcast[S16] | None

    def __call__(self, partitions: Iterable[Resident]) -> Iterator[tuple[int, Ranked]]:
        scorer = self.scorer
        if self.in_stock is not None:
            scorer = PassScorer(scorer.queries, scorer.requests, scorer.hidden, self.in_stock.value)
        yield from enumerate(scorer.best(b for part in partitions for b in resident.blocks(part)))


@dataclass(frozen=True)
class _Writer:
    """Runs in each task of the second stage: a request's global top k (the executors' and the
    driver's candidates), its listings' names and live stock read, written."""

    store_url: str
    query_ids: tuple[uuid.UUID, ...]
    ks: tuple[int, ...]
    driver: tuple[Ranked, ...]  # each request's candidates among the driver's fresh listings

    def __call__(self, grouped: Iterable[tuple[int, Iterable[Ranked]]]) -> Iterator[tuple[int, int]]:
        answers = [(j, top_k([*parts, self.driver[j]], self.ks[j])) for j, parts in grouped]
        if not answers:
            return
        store = open_store(self.store_url)
        try:
            ids = list(dict.fromkeys(r.listing_id for _, ranked in answers for r in ranked))
            names, stock = store.listing_names(ids), store.get_stock(ids)
            for j, ranked in answers:
                rows = result_rows(ranked, names, stock)
                if rows:  # none qualified: nothing to write
                    store.write_query_results(self.query_ids[j], rows)
                yield j, len(rows)
        finally:
            store.close()


def result_rows(
    ranked: Sequence[RankedListing], names: Mapping[uuid.UUID, str], stock: Mapping[uuid.UUID, StockLevel]
) -> list[ResultRow]:
    """A request's answer as its ``query_results`` rows, with names and live stock (None where
    a listing has no stock level)."""
    return [
        ResultRow(
            r.score, r.listing_id, names.get(r.listing_id, ""), _inventory(stock, r.listing_id), r.matches
        )
        for r in ranked
    ]


def _inventory(stock: Mapping[uuid.UUID, StockLevel], listing_id: uuid.UUID) -> int | None:
    level = stock.get(listing_id)
    return None if level is None else level.inventory


def answer_batch(
    spark: SparkSession,
    cache: VectorCache,
    fresh: Fresh,
    store: Store,
    query_ids: Sequence[uuid.UUID],
    requests: Sequence[SearchRequest],
) -> list[int]:
    """Score ``requests`` in one pass, write their rows to ``query_results``; the rows written
    for each (0: none qualified)."""
    if not requests:
        return []
    sc = spark.sparkContext
    queries = np.stack([r.vector for r in requests]).astype(np.float32)
    filtering = any(r.in_stock_only for r in requests)
    stocked = in_stock(store) if filtering else NO_IDS  # the whole stock only when asked for
    shared = sc.broadcast(stocked) if filtering else None
    try:
        scorer = PassScorer(queries, tuple(requests), fresh.hidden)
        candidates = cache.rdd.mapPartitions(PassTask(scorer, shared))
        local = PassScorer(queries, tuple(requests), in_stock=stocked, threads=None)
        driver = tuple(local.best(fresh.blocks))  # shipped with the writer: the job keeps its shape
        ks = tuple(r.opts.k for r in requests)
        writer = _Writer(store.url, tuple(query_ids), ks, driver)
        written = dict(
            candidates.groupByKey(min(len(requests), sc.defaultParallelism)).mapPartitions(writer).collect()
        )
    finally:
        if shared is not None:
            shared.destroy()
    return [written.get(j, 0) for j in range(len(requests))]
