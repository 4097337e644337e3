"""The Spark search service's cache: every vector of one model, held by the executors.

The vectors are loaded once into a persisted RDD of :class:`Block` s: each a float16 matrix
with its image and listing ids, sorted by listing (a listing is never split across blocks or
partitions, so a listing's score is aggregated where its images are). A pass scores a batch of
queries against a block with one matrix product (the engine's kernel) and ranks each query
with its own options (:func:`search.scoring.ranked_each`), so no Arrow row is decoded and no
listing regrouped after the load: a block is one buffer, unpickled as such.

Listings that changed after the load are ``hidden`` in a pass: the driver scores their current
vectors itself (:mod:`search.spark.fresh`) and merges them with the executors' top k.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pyspark import RDD, StorageLevel
from pyspark.sql import SparkSession

from config.settings import SparkSettings
from schemas.codec import numpy_dtype
from schemas.records import FeatureBatch, ModelInfo
from search import kernel, scoring
from search.scoring import RankedListing, SearchRequest
from search.spark.cassandra import read_features, uses_connector
from store import open_store

log = logging.getLogger(__name__)
S16 = npt.NDArray[np.bytes_]
NO_IDS: S16 = np.zeros(0, dtype="S16")
Ranked = list[RankedListing]


@dataclass(frozen=True)
class Block:
    """Rows of whole listings, grouped by listing (image ids ascending within one)."""

    listing_ids: S16  # one per listing, in row order
    starts: npt.NDArray[np.int64]  # first row of each listing
    image_ids: S16  # one per row
    vectors: kernel.Vectors  # (rows, dim), the engine's in-memory dtype

    @property
    def rows(self) -> int:
        return len(self.image_ids)


def blocks_of(batch: FeatureBatch, dtype: str, max_rows: int) -> Iterator[Block]:
    """``batch`` (whole listings) as blocks of at most ``max_rows`` rows (a larger listing is a
    block of its own), sorted as the engine sorts: by listing, then image."""
    if len(batch) == 0:
        return
    order = np.lexsort((batch.image_ids, batch.listing_ids))
    listing_rows, image_ids = batch.listing_ids[order], batch.image_ids[order]
    vectors = kernel.narrow(batch.vectors[order], numpy_dtype(dtype))
    starts = scoring.group_starts(listing_rows)
    cut, first = [0], 0
    for i, s in enumerate(starts.tolist()):
        if s - cut[-1] >= max_rows and i > first:
            cut.append(s)
            first = i
    bounds = [*cut, len(listing_rows)]
    for lo, hi in itertools.pairwise(bounds):
        mine = starts[(starts >= lo) & (starts < hi)]
        yield Block(
            listing_rows[mine].copy(),
            (mine - lo).astype(np.int64),
            image_ids[lo:hi].copy(),
            vectors[lo:hi].copy(),
        )


@dataclass(frozen=True)
class _ShardLoader:
    """Runs inside each load task: reads its shards of the store into blocks."""

    store_url: str
    model: ModelInfo
    shards: int
    dtype: str
    block_rows: int

    def __call__(self, shard_numbers: Iterable[int]) -> Iterator[Block]:
        store = open_store(self.store_url)
        try:
            for shard in shard_numbers:
                parts = list(store.scan_features(self.model, int(shard), self.shards))
                yield from blocks_of(FeatureBatch.concat(parts, self.model.dim), self.dtype, self.block_rows)
        finally:
            store.close()


@dataclass(frozen=True)
class _RowLoader:
    """Runs inside each task over spark-cassandra-connector's rows (one token range a partition,
    so whole listings): decoded once, at the load."""

    model: ModelInfo
    dtype: str
    block_rows: int

    def __call__(self, rows: Iterable[object]) -> Iterator[Block]:
        listing, image, vec = [], [], []
        for r in rows:
            listing.append(bytes(r[0]))  # type: ignore[index]
            image.append(bytes(r[1]))  # type: ignore[index]
            vec.append(bytes(r[2]))  # type: ignore[index]
        if not vec:
            return
        vectors = np.frombuffer(b"".join(vec), numpy_dtype(self.model.dtype)).reshape(
            len(vec), self.model.dim
        )
        batch = FeatureBatch(
            np.array(listing, dtype="S16"), np.array(image, dtype="S16"), vectors.astype(np.float32)
        )
        yield from blocks_of(batch, self.dtype, self.block_rows)


@dataclass(frozen=True)
class CacheStats:
    rows: int
    listings: int
    blocks: int
    partitions: int
    bytes: int
    load_s: float


class VectorCache:
    """The persisted blocks of one model and what they hold."""

    def __init__(self, rdd: RDD[Block], stats: CacheStats, generation: int) -> None:
        self.rdd, self.stats, self.generation = rdd, stats, generation

    @classmethod
    def load(
        cls,
        spark: SparkSession,
        store_url: str,
        model: ModelInfo,
        settings: SparkSettings,
        dtype: str,
        generation: int = 0,
    ) -> VectorCache:
        """Read every vector of ``model`` once (store shard scans in Spark tasks, or the
        connector), keep the blocks in executor memory (spilled to their disk when short), and
        count them: the cache is complete when this returns."""
        started = time.monotonic()
        sc = spark.sparkContext
        rdd: RDD[Block]
        if uses_connector(settings, store_url):
            rows = read_features(spark, store_url, model).rdd
            rdd = rows.mapPartitions(_RowLoader(model, dtype, settings.serve_block_rows))
        else:
            n = settings.shards or 2 * sc.defaultParallelism
            loader = _ShardLoader(store_url, model, n, dtype, settings.serve_block_rows)
            rdd = sc.parallelize(range(n), n).mapPartitions(loader)
        rdd = rdd.setName(f"lookalike-vectors-{model.name}-{generation}")
        rdd.persist(StorageLevel.MEMORY_AND_DISK)
        counts = rdd.map(lambda b: (b.rows, len(b.listing_ids), 1, b.vectors.nbytes)).collect()
        totals = [sum(c[i] for c in counts) for i in range(4)]
        stats = CacheStats(
            totals[0], totals[1], totals[2], rdd.getNumPartitions(), totals[3], time.monotonic() - started
        )
        return cls(rdd, stats, generation)

    def unpersist(self) -> None:
        self.rdd.unpersist(blocking=False)


@dataclass(frozen=True)
class PassScorer:
    """Scores blocks for a batch of requests; runs in each task of a pass (and on the driver
    for its fresh listings). ``hidden``: listings never ranked here (sorted ``S16``);
    ``in_stock``: the listings with stock (sorted), for the requests that filter on it."""

    queries: npt.NDArray[np.float32]  # (requests, dim)
    requests: tuple[SearchRequest, ...]
    hidden: S16 = field(default_factory=lambda: NO_IDS)
    in_stock: S16 = field(default_factory=lambda: NO_IDS)
    threads: int | None = 1  # a Spark task has one core

    def score_matrix(self, block: Block) -> npt.NDArray[np.float32]:
        """(requests, rows) scores of one block: one matrix product."""
        return kernel.score_by_query(block.vectors, self.queries, threads=self.threads)

    def score(self, block: Block) -> list[Ranked]:
        """Each request's ranked listings of one block."""
        scores = self.score_matrix(block)
        base = np.ones(len(block.listing_ids), dtype=bool)
        if len(self.hidden):
            base &= ~np.isin(block.listing_ids, self.hidden)
        out: list[Ranked] = [[] for _ in self.requests]
        for only_stock in (False, True):
            which = [j for j, r in enumerate(self.requests) if r.in_stock_only == only_stock]
            if not which:
                continue
            allowed = base & np.isin(block.listing_ids, self.in_stock) if only_stock else base
            ranked = scoring.ranked_each(
                scores if len(which) == len(self.requests) else scores[which],
                block.starts,
                block.listing_ids,
                block.image_ids,
                [self.requests[j] for j in which],
                allowed,
            )
            for j, r in zip(which, ranked, strict=True):
                out[j] = r
        return out

    def best(self, blocks: Iterable[Block]) -> list[Ranked]:
        """Each request's top k over ``blocks``."""
        best: list[Ranked] = [[] for _ in self.requests]
        for block in blocks:
            for j, ranked in enumerate(self.score(block)):
                if ranked:
                    best[j] = top_k([best[j], ranked], self.requests[j].opts.k)
        return best

    def __call__(self, blocks: Iterable[Block]) -> Iterator[tuple[int, Ranked]]:
        for j, ranked in enumerate(self.best(blocks)):
            if ranked:
                yield j, ranked


def top_k(lists: Iterable[Sequence[RankedListing]], k: int) -> Ranked:
    """The best k of several ranked lists of distinct listings: score descending, then listing
    id (bytes order), the engine's order."""
    merged = [r for part in lists for r in part]
    merged.sort(key=lambda r: (-r.score, r.listing_id.bytes))
    return merged[:k]
