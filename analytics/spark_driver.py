"""The Spark analytics job's driver-side operations over the cached features.

:class:`Job` holds the session, the features and the row index; each operation here launches one
pass of a per-partition step (``analytics.spark_tasks``) and gathers its compact result on the
driver: a sample of vectors, the vectors of a few rows, an exact search of a few rows over every
partition, the blocked kNN graph, and the evidence of the top misfits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from analytics import definitions as d
from analytics.assemble import Evidence
from analytics.knn import KnnGraph
from analytics.pca import sample_rows
from analytics.spark_tasks import (
    GRAPH_SCHEMA,
    KEYED_SCHEMA,
    PICK_SCHEMA,
    TOPK_SCHEMA,
    BlockKnn,
    ExactTopK,
    Keyed,
    Pick,
    RowIndex,
    blobs,
    f32,
)
from config.settings import AnalyticsSettings
from schemas.codec import numpy_dtype
from schemas.records import ModelInfo

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]


@dataclass
class Job:
    spark: SparkSession
    features: DataFrame
    model: ModelInfo
    index: RowIndex | None = None

    def table(self, df: DataFrame) -> pa.Table:
        return df.toArrow()

    def index_rows(self, ids: npt.NDArray[np.bytes_]) -> None:
        """Broadcast image id -> driver row (``ids`` in the driver's row order) for the steps that
        work by row."""
        by_image = np.argsort(ids, kind="stable")
        sc = self.spark.sparkContext
        self.index = RowIndex(sc.broadcast(ids[by_image]), sc.broadcast(by_image.astype(np.int64)))

    def unpersist_index(self) -> None:
        assert self.index is not None
        self.index.sorted_ids.unpersist()
        self.index.rows.unpersist()

    def pick(self, rows: I64) -> dict[int, F32]:
        """The vectors of some rows, by row."""
        assert self.index is not None
        wanted = self.spark.sparkContext.broadcast(np.unique(rows).astype(np.int64))
        try:
            t = self.table(self.features.mapInArrow(Pick(self.model, self.index, wanted), PICK_SCHEMA))
        finally:
            wanted.unpersist()
        got = blobs(t.column("vector"), numpy_dtype(self.model.dtype), self.model.dim)
        return {int(r): f32(v) for r, v in zip(t.column("row").to_numpy(), got, strict=True)}

    def vectors_of(self, rows: I64) -> F32:
        """The vectors of some rows, stacked in their order."""
        got = self.pick(rows)
        return (
            np.stack([got[int(r)] for r in rows]) if len(rows) else np.zeros((0, self.model.dim), np.float32)
        )

    def search(self, rows: I64, k: int) -> tuple[I64, F32]:
        """Exact top k (self excluded) of some rows over every partition, merged here."""
        assert self.index is not None
        queries = self.vectors_of(rows)
        t = self.table(
            self.features.mapInArrow(ExactTopK(self.model, self.index, queries, rows, k), TOPK_SCHEMA)
        )
        q = t.column("query").to_numpy()
        r = blobs(t.column("rows"), np.int64, k)
        s = blobs(t.column("sims"), np.float32, k)
        return _merge_partitions(q, r, s, len(rows), k)


def _merge_partitions(q: npt.NDArray[np.int32], r: I64, s: F32, queries: int, k: int) -> tuple[I64, F32]:
    """Each query's top k from the partitions' top k (row i: query ``q[i]`` in one partition)."""
    parts = np.argsort(q, kind="stable")
    per = np.bincount(q, minlength=queries)
    width = int(per.max()) if len(per) else 0
    all_r = np.full((queries, width * k), -1, dtype=np.int64)
    all_s = np.full((queries, width * k), -np.inf, dtype=np.float32)
    slot = np.zeros(queries, dtype=np.int64)
    for i in parts:
        j = int(q[i])
        all_r[j, slot[j] * k : (slot[j] + 1) * k] = r[i]
        all_s[j, slot[j] * k : (slot[j] + 1) * k] = s[i]
        slot[j] += 1
    return d.merge_topk(all_r, all_s, k)


def sample_vectors(job: Job, size: int, n: int, seed: int) -> F32:
    """About ``size`` rows' vectors (all when n <= size), at most ``size``."""
    fraction = min(1.0, 1.2 * size / n)
    drawn = job.features.sample(False, fraction, seed) if fraction < 1 else job.features
    t = job.table(drawn)
    v = blobs(t.column("vector"), numpy_dtype(job.model.dtype), job.model.dim)
    ids = blobs(t.column("image_id"), "S16", 1).ravel()
    v = v[np.argsort(ids, kind="stable")]  # a fixed order, whatever the partitions' order
    return f32(v[sample_rows(len(v), size, seed)])


def knn_graph(job: Job, labels: I32, centroids: F32, n: int, settings: AnalyticsSettings) -> KnnGraph:
    """The kNN graph, exact within blocks: one block (exact search) up to ``exact_max`` images,
    else each k-means cluster's block searched against the ``knn_probes`` clusters nearest it."""
    exact = settings.knn_method == "exact" or (settings.knn_method == "auto" and n <= settings.exact_max)
    if exact:
        blocks, cents, probes = np.zeros(n, np.int32), np.ones((1, 1), np.float32), 1
    else:
        blocks, cents, probes = labels, centroids, settings.knn_probes
    receivers = _receivers(d.probe_clusters(cents, probes), len(cents))
    sc = job.spark.sparkContext
    bc_labels = sc.broadcast(blocks)
    try:
        assert job.index is not None
        keyed = job.features.mapInArrow(Keyed(job.model, job.index, bc_labels, receivers), KEYED_SCHEMA)
        # enough partitions that one holds ~256 MB of shuffled vectors (a block is never split)
        shuffled_mb = n * probes * job.model.dim * numpy_dtype(job.model.dtype).itemsize / 2**20
        parts = max(1, min(len(cents), max(2 * sc.defaultParallelism, math.ceil(shuffled_mb / 256))))
        shuffled = keyed.repartition(parts, "block")
        k = settings.knn
        t = job.table(shuffled.mapInArrow(BlockKnn(job.model.dim, job.model.dtype, k), GRAPH_SCHEMA))
    finally:
        bc_labels.unpersist()
    rows = t.column("row").to_numpy()
    neighbours = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    neighbours[rows] = blobs(t.column("neighbours"), np.int64, k)
    sims[rows] = blobs(t.column("sims"), np.float32, k)
    method = "exact" if exact else f"clusters(probes={min(probes, len(cents))})"
    return KnnGraph(neighbours, sims, method)


def _receivers(probe: I64, clusters: int) -> tuple[tuple[int, ...], ...]:
    """Cluster -> the other blocks that probe it (``probe``: each block's clusters, itself first)."""
    receivers: list[list[int]] = [[] for _ in range(clusters)]
    for b, probed in enumerate(probe):
        for c in probed[1:]:
            receivers[int(c)].append(b)
    return tuple(tuple(r) for r in receivers)


def misfit_evidence(job: Job, starts: I64, n: int, top: I64, m: int = 5) -> Evidence:
    """Evidence of a misfit: its listing's other images, most similar first (their vectors fetched
    once, for the top rows' listings only)."""
    ends = np.append(starts[1:], n)
    groups = np.searchsorted(starts, top, side="right") - 1
    needed = np.unique(np.concatenate([np.arange(starts[g], ends[g]) for g in groups])) if len(top) else top
    vectors = job.pick(needed.astype(np.int64))

    def evidence(rows: I64) -> list[list[tuple[int, float]]]:
        out = []
        for r in rows:
            g = int(np.searchsorted(starts, r, side="right") - 1)
            others = np.array([j for j in range(int(starts[g]), int(ends[g])) if j != r], dtype=np.int64)
            s = np.array([float(vectors[int(j)] @ vectors[int(r)]) for j in others], dtype=np.float32)
            order = np.lexsort((others, -s.astype(np.float64)))[:m]
            out.append([(int(others[i]), float(s[i])) for i in order])
        return out

    return evidence
