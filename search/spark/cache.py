"""The Spark search service's cache: every vector of one model, held beside the executors.

The vectors are loaded once into :class:`~search.spark.blocks.Block` s, each a float16 matrix
with its image and listing ids, sorted by listing (a listing is never split across blocks or
partitions, so a listing's score is aggregated where its images are). Each load task keeps its
partition's blocks as files in its executor's local directory, mapped by the passes
(:mod:`search.spark.resident`); Spark persists only their descriptors, which place each pass's
task where its vectors are and carry the lineage that loads them again when an executor is
lost. A pass scores a batch of queries against a block with one matrix product (the engine's
kernel) and ranks each query with its own options (:func:`search.scoring.ranked_each`).

Listings that changed after the load are ``hidden`` in a pass: the driver scores their current
vectors itself (:mod:`search.spark.fresh`) and merges them with the executors' top k.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pyspark import RDD, StorageLevel
from pyspark.sql import SparkSession

from config.settings import SparkSettings
from schemas.codec import numpy_dtype
from schemas.records import FeatureBatch, ModelInfo
from search import kernel, scoring
from search.scoring import RankedListing, SearchRequest
from search.spark import resident
from search.spark.blocks import S16, Block, blocks_of
from search.spark.cassandra import read_features, uses_connector
from search.spark.resident import Resident
from store import open_store

log = logging.getLogger(__name__)
NO_IDS: S16 = np.zeros(0, dtype="S16")
Ranked = list[RankedListing]


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
class _Keeper:
    """Runs in each load task: its partition's blocks written beside the executor, described.
    ``replay``: the partition's items can be read again from a task (store shards can; a
    connector's rows cannot)."""

    read: Callable[[Iterable[Any]], Iterator[Block]]
    model: str
    generation: int
    replay: bool

    def __call__(self, partition: int, items: Iterable[Any]) -> Iterator[Resident]:
        folder = resident.folder_for(self.model, self.generation, partition)
        if self.replay:
            source = functools.partial(self.read, tuple(items))
            yield resident.keep(source(), folder, source)
        else:
            yield resident.keep(self.read(items), folder, None)


@dataclass(frozen=True)
class CacheStats:
    rows: int
    listings: int
    blocks: int
    partitions: int
    bytes: int
    load_s: float


class VectorCache:
    """The persisted descriptors of one model's resident blocks, and what they hold."""

    def __init__(self, rdd: RDD[Resident], stats: CacheStats, generation: int) -> None:
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
        connector), keep the blocks beside the executors, and count them: the cache is complete
        when this returns."""
        started = time.monotonic()
        sc = spark.sparkContext
        rdd: RDD[Resident]
        if uses_connector(settings, store_url):
            rows = read_features(spark, store_url, model).rdd
            rows_loader = _RowLoader(model, dtype, settings.serve_block_rows)
            rdd = rows.mapPartitionsWithIndex(_Keeper(rows_loader, model.name, generation, replay=False))
        else:
            n = settings.shards or sc.defaultParallelism  # one a core: a pass is one wave of tasks
            loader = _ShardLoader(store_url, model, n, dtype, settings.serve_block_rows)
            keeper = _Keeper(loader, model.name, generation, replay=True)
            rdd = sc.parallelize(range(n), n).mapPartitionsWithIndex(keeper)
        rdd = rdd.setName(f"lookalike-vectors-{model.name}-{generation}")
        rdd.persist(StorageLevel.MEMORY_ONLY)
        counts = rdd.map(lambda r: (r.rows, r.listings, r.blocks, r.nbytes)).collect()
        totals = [sum(c[i] for c in counts) for i in range(4)]
        stats = CacheStats(
            totals[0], totals[1], totals[2], rdd.getNumPartitions(), totals[3], time.monotonic() - started
        )
        return cls(rdd, stats, generation)

    def unpersist(self) -> None:
        """Let go of the descriptors; each host deletes the files at its first pass over a newer
        generation."""
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
