"""One batch of the Spark search service: a single pass over the cached blocks.

Every request of the batch is scored in the same pass (one matrix product per block), each with
its own options and exclusions; each partition keeps every request's top k; the driver's fresh
listings are scored on the driver and joined in; the candidates of a request meet in one task
of the next stage, which takes the global top k, joins the listings' names and live stock and
writes the request's rows to ``query_results`` (one write per query, from the executors).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pyspark import Broadcast
from pyspark.sql import SparkSession

from search.scoring import RankedListing, SearchRequest
from search.spark import resident
from search.spark.blocks import S16, Block
from search.spark.cache import PassScorer, Ranked, VectorCache, top_k
from search.spark.resident import Resident
from store import ResultRow, Store, open_store


@dataclass(frozen=True)
class Stock:
    """Every stock level, as sorted arrays (looked up in the tasks)."""

    listing_ids: S16
    inventory: npt.NDArray[np.int64]

    @classmethod
    def read(cls, store: Store) -> Stock:
        levels = store.all_stock()
        ids = np.array([s.listing_id.bytes for s in levels], dtype="S16")
        inv = np.array([s.inventory for s in levels], dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        return cls(ids[order], inv[order])

    def in_stock(self) -> S16:
        return self.listing_ids[self.inventory > 0]

    def of(self, listing_ids: S16) -> list[int | None]:
        """Each listing's inventory; None where the store has no stock level."""
        if len(self.listing_ids) == 0:
            return [None] * len(listing_ids)
        at = np.minimum(np.searchsorted(self.listing_ids, listing_ids), len(self.listing_ids) - 1)
        found = self.listing_ids[at] == listing_ids
        return [int(self.inventory[a]) if f else None for a, f in zip(at, found, strict=True)]


@dataclass(frozen=True)
class Fresh:
    """What the driver holds beside the cache: the current rows of the listings that changed
    since the load (scored here), and every listing the cache must not rank (those, and the
    removed ones)."""

    blocks: tuple[Block, ...] = ()
    hidden: S16 = field(default_factory=lambda: np.zeros(0, dtype="S16"))


@dataclass(frozen=True)
class _Pass:
    """Runs in each task of a pass: the resident blocks' candidates for every request."""

    scorer: PassScorer
    stock: Broadcast[Stock] | None

    def __call__(self, partitions: Iterable[Resident]) -> Iterator[tuple[int, Ranked]]:
        scorer = self.scorer
        if self.stock is not None:
            scorer = PassScorer(scorer.queries, scorer.requests, scorer.hidden, self.stock.value.in_stock())
        yield from scorer(b for part in partitions for b in resident.blocks(part))


@dataclass(frozen=True)
class _Writer:
    """Runs in each task of the second stage: a request's global top k, written."""

    store_url: str
    query_ids: tuple[uuid.UUID, ...]
    ks: tuple[int, ...]
    stock: Broadcast[Stock]

    def __call__(self, grouped: Iterable[tuple[int, Iterable[Ranked]]]) -> Iterator[tuple[int, int]]:
        answers = [(j, top_k(parts, self.ks[j])) for j, parts in grouped]
        if not answers:
            return
        store = open_store(self.store_url)
        try:
            ids = list({r.listing_id for _, ranked in answers for r in ranked})
            names = store.listing_names(ids)
            for j, ranked in answers:
                rows = result_rows(ranked, names, self.stock.value)
                store.write_query_results(self.query_ids[j], rows)
                yield j, len(rows)
        finally:
            store.close()


def result_rows(
    ranked: Sequence[RankedListing], names: Mapping[uuid.UUID, str], stock: Stock
) -> list[ResultRow]:
    """A request's answer as its ``query_results`` rows, with names and live stock."""
    inventory = stock.of(np.array([r.listing_id.bytes for r in ranked], dtype="S16"))
    return [
        ResultRow(r.score, r.listing_id, names.get(r.listing_id, ""), inv, r.matches)
        for r, inv in zip(ranked, inventory, strict=True)
    ]


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
    stock = Stock.read(store)
    shared = sc.broadcast(stock)
    try:
        filtering = any(r.in_stock_only for r in requests)
        scorer = PassScorer(queries, tuple(requests), fresh.hidden)
        candidates = cache.rdd.mapPartitions(_Pass(scorer, shared if filtering else None))
        local = PassScorer(queries, tuple(requests), in_stock=stock.in_stock(), threads=None)
        driver = [(j, r) for j, r in enumerate(local.best(fresh.blocks)) if r]
        if driver:
            candidates = candidates.union(sc.parallelize(driver, 1))
        ks = tuple(r.opts.k for r in requests)
        writer = _Writer(store.url, tuple(query_ids), ks, shared)
        written = dict(
            candidates.groupByKey(min(len(requests), sc.defaultParallelism)).mapPartitions(writer).collect()
        )
    finally:
        shared.destroy()
    return [written.get(j, 0) for j in range(len(requests))]
