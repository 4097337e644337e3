"""The Spark analytics job: the local engine's analysis (``analytics.local``) at cluster scale.

Every step runs the shared definitions (``analytics.definitions``) on numpy arrays: per partition
over Arrow batches (``mapInArrow``: one matrix product per partition or block, never a Python call
per row), or on the driver for what is small.

* features are read as for search (``search.spark.job.load_features``: token ranges / shards of
  listings, so a listing's rows share a partition and misfits need no shuffle), and cached;
* PCA is fitted on the driver from a sample; k-means (the same FAISS spherical k-means) on the
  driver from a sample of PCA points projected in the partitions; the full-space centroids are
  summed per partition and added up on the driver; every row is assigned in its partition against
  the broadcast centroids (similarity, misfit and map point computed in the same pass);
* the kNN graph is exact on the full vectors within blocks: each row is shuffled to its own
  k-means cluster's block (as a query) and to the blocks of the clusters that probe its cluster
  (as a candidate): ``knn_probes`` copies of the vectors, the least this search needs; each block
  is one matrix product. Up to ``exact_max`` images it is one block: exact search;
* recall and the rows whose graph holds too few other-listing neighbours use an exact search of a
  few broadcast query vectors over every partition, merged on the driver;
* the driver gets compact per-row columns (ids, cluster, scores, a 50-d map point, the graph), the
  vectors of the few rows it needs (duplicate candidates, evidence), and runs the same
  ``assemble()``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from analytics import definitions as d
from analytics.assemble import Evidence, assemble, sims_evidence
from analytics.clusters import spherical_kmeans
from analytics.knn import KnnGraph, measure_recall_by, outlier_kth_by
from analytics.local import PCA_SAMPLE
from analytics.mapping import MAP_DIM, map_xy
from analytics.pca import Pca, fit_pca, sample_rows
from analytics.phases import Phases
from config.settings import AnalyticsSettings, SparkSettings
from schemas.analytics import AnalysisResult, RunInfo
from schemas.codec import numpy_dtype
from schemas.records import FeatureBatch, ModelInfo
from search.scoring import group_starts
from search.spark.job import _feature_batch, _features_arrow_schema, load_features

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]

POINTS_SCHEMA = "point binary"
SUMS_SCHEMA = "sums binary, counts binary"
ROWS_SCHEMA = "image_id binary, listing_id binary, cluster int, similarity float, misfit float, map binary"
KEYED_SCHEMA = "block int, query boolean, row long, vector binary"
GRAPH_SCHEMA = "row long, neighbours binary, sims binary"
TOPK_SCHEMA = "query int, rows binary, sims binary"
PICK_SCHEMA = "row long, vector binary"


def features_of(
    spark: SparkSession, store_url: str, model: ModelInfo, settings: SparkSettings | None = None
) -> DataFrame:
    """The model's vectors as the search job reads them (cached)."""
    return load_features(spark, store_url, model, 0, settings)


# -- per-partition steps (each runs inside a task; its fields are pickled) --------------------------
def _partition(batches: Iterable[pa.RecordBatch], model: ModelInfo) -> FeatureBatch | None:
    """A partition's rows, a listing's rows contiguous and ordered by image (as the local engine)."""
    table = pa.Table.from_batches(list(batches), schema=_features_arrow_schema())
    if table.num_rows == 0:
        return None
    fb = _feature_batch(table, model)
    order = np.lexsort((fb.image_ids, fb.listing_ids))
    return FeatureBatch(fb.listing_ids[order], fb.image_ids[order], fb.vectors[order])


def _f32(v: npt.NDArray[np.floating]) -> F32:
    return np.ascontiguousarray(v, dtype=np.float32)


def _points(vectors: npt.NDArray[np.floating], pca: Pca | None) -> F32:
    return d.normalise_rows(pca.apply(vectors)) if pca is not None else _f32(vectors)


def _blob_column(values: npt.NDArray[Any]) -> pa.Array:
    """Rows of a 2-D array as a binary column (one blob per row)."""
    values = np.ascontiguousarray(values)
    n = len(values)
    width = values[0].nbytes if n else 0
    offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int32) * width)
    return pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(values.tobytes())])


def _blobs(column: pa.ChunkedArray | pa.Array, dtype: npt.DTypeLike, width: int) -> npt.NDArray[Any]:
    """The inverse of :func:`_blob_column`: (rows, width) of ``dtype``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.binary())
    n = len(column)
    if n == 0:
        return np.zeros((0, width), dtype=dtype)
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)
    first, last = offsets[column.offset], offsets[column.offset + n]
    raw = memoryview(column.buffers()[2])[first:last]
    return np.frombuffer(raw, dtype=dtype).reshape(n, width)


@dataclass(frozen=True)
class _Project:
    """Sampled rows -> their k-means training points (PCA-reduced and normalised, or the vectors)."""

    model: ModelInfo
    pca: Pca | None

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fb = _partition(batches, self.model)
        if fb is None:
            return
        pts = _points(fb.vectors, self.pca)
        yield pa.RecordBatch.from_arrays([_blob_column(pts)], names=["point"])


@dataclass(frozen=True)
class _CentroidSums:
    """Per partition: the sum of the full vectors of each (first-pass) cluster, and the counts."""

    model: ModelInfo
    pca: Pca | None
    centroids: F32  # k-means centroids in the points' space
    full: bool  # k-means ran on the full vectors (the points are the vectors)

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fb = _partition(batches, self.model)
        if fb is None:
            return
        k = len(self.centroids)
        pts = d.normalise_rows(fb.vectors) if self.full else _points(fb.vectors, self.pca)
        labels, _ = d.assign(pts, self.centroids)
        sums = np.zeros((k, fb.vectors.shape[1]), dtype=np.float32)
        for s in range(0, len(labels), 8192):
            lab = labels[s : s + 8192]
            onehot = np.zeros((k, len(lab)), dtype=np.float32)
            onehot[lab, np.arange(len(lab))] = 1.0
            sums += onehot @ _f32(fb.vectors[s : s + 8192])
        counts = np.bincount(labels, minlength=k).astype(np.int64)
        yield pa.RecordBatch.from_arrays(
            [pa.array([sums.tobytes()], pa.binary()), pa.array([counts.tobytes()], pa.binary())],
            names=["sums", "counts"],
        )


@dataclass(frozen=True)
class _Rows:
    """Per row: cluster and similarity (broadcast centroids), misfit (the listing is in the
    partition) and the map point."""

    model: ModelInfo
    pca: Pca | None
    map_pca: Pca | None  # when there is no analysis PCA and the vectors are wider than the map
    centroids: F32

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fb = _partition(batches, self.model)
        if fb is None:
            return
        labels, sims = d.assign(fb.vectors, self.centroids)
        misfit = d.misfit_scores(fb.vectors, group_starts(fb.listing_ids))
        if self.pca is not None:
            map_pts = _points(fb.vectors, self.pca)[:, :MAP_DIM]
        elif self.map_pca is not None:
            map_pts = self.map_pca.apply(fb.vectors)
        else:
            map_pts = _f32(fb.vectors)
        yield pa.RecordBatch.from_arrays(
            [
                _blob_column(fb.image_ids.reshape(-1, 1)),
                _blob_column(fb.listing_ids.reshape(-1, 1)),
                pa.array(labels, pa.int32()),
                pa.array(sims, pa.float32()),
                pa.array(misfit, pa.float32()),
                _blob_column(_f32(map_pts)),
            ],
            names=["image_id", "listing_id", "cluster", "similarity", "misfit", "map"],
        )


@dataclass(frozen=True)
class _RowIndex:
    """image id -> driver row, broadcast (two arrays: ids sorted, and their rows)."""

    sorted_ids: Any  # Broadcast of S16 array
    rows: Any  # Broadcast of int64 array

    def __call__(self, image_ids: npt.NDArray[np.bytes_]) -> I64:
        ids = self.sorted_ids.value
        pos = np.searchsorted(ids, image_ids)
        out: I64 = self.rows.value[np.minimum(pos, len(ids) - 1)]
        return out


@dataclass(frozen=True)
class _Keyed:
    """Each row to its own cluster's block (query) and to the blocks probing its cluster."""

    model: ModelInfo
    index: _RowIndex
    labels: Any  # Broadcast of the driver's labels (int32, by row)
    receivers: tuple[tuple[int, ...], ...]  # cluster -> the other blocks that probe it

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fb = _partition(batches, self.model)
        if fb is None:
            return
        rows = self.index(fb.image_ids)
        labels = self.labels.value[rows]
        blocks, query, picks = [labels.astype(np.int32)], [np.ones(len(rows), bool)], [np.arange(len(rows))]
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            for b in self.receivers[int(c)]:
                blocks.append(np.full(len(members), b, dtype=np.int32))
                query.append(np.zeros(len(members), bool))
                picks.append(members)
        pick, block, is_query = np.concatenate(picks), np.concatenate(blocks), np.concatenate(query)
        vectors = np.ascontiguousarray(fb.vectors)
        for s in range(0, len(pick), 8192):
            sl = pick[s : s + 8192]
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(block[s : s + 8192], pa.int32()),
                    pa.array(is_query[s : s + 8192], pa.bool_()),
                    pa.array(rows[sl], pa.int64()),
                    _blob_column(vectors[sl]),
                ],
                names=["block", "query", "row", "vector"],
            )


@dataclass(frozen=True)
class _BlockKnn:
    """Each block's queries against all its rows: one matrix product per block."""

    dim: int
    dtype: str
    k: int

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches(list(batches), schema=_keyed_arrow_schema())
        if table.num_rows == 0:
            return
        blocks = table.column("block").to_numpy()
        query = table.column("query").to_numpy(zero_copy_only=False)
        rows = table.column("row").to_numpy()
        vectors = _blobs(table.column("vector"), self.dtype, self.dim)
        order = np.argsort(blocks, kind="stable")
        bounds = np.flatnonzero(np.diff(blocks[order])) + 1
        for group in np.split(order, bounds):
            cand = _f32(vectors[group])
            cand_rows = rows[group]
            qsel = np.flatnonzero(query[group])
            for s in range(0, len(qsel), 2048):
                q = qsel[s : s + 2048]
                ids, sims = d.block_topk(cand[q], cand_rows[q], cand, cand_rows, self.k)
                yield pa.RecordBatch.from_arrays(
                    [pa.array(cand_rows[q], pa.int64()), _blob_column(ids), _blob_column(sims)],
                    names=["row", "neighbours", "sims"],
                )


@dataclass(frozen=True)
class _ExactTopK:
    """A few broadcast query vectors against every row of the partition: their top k here."""

    model: ModelInfo
    index: _RowIndex
    queries: F32
    query_rows: I64
    k: int

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fb = _partition(batches, self.model)
        if fb is None:
            return
        rows = self.index(fb.image_ids)
        best_r = np.full((len(self.queries), 0), -1, dtype=np.int64)
        best_s = np.full((len(self.queries), 0), -np.inf, dtype=np.float32)
        for s in range(0, len(rows), 16384):
            r, sc = d.block_topk(self.queries, self.query_rows, _f32(fb.vectors[s : s + 16384]),
                                 rows[s : s + 16384], self.k)  # fmt: skip
            best_r, best_s = d.merge_topk(
                np.concatenate([best_r, r], axis=1), np.concatenate([best_s, sc], axis=1), self.k
            )
        yield pa.RecordBatch.from_arrays(
            [pa.array(np.arange(len(self.queries)), pa.int32()), _blob_column(best_r), _blob_column(best_s)],
            names=["query", "rows", "sims"],
        )


@dataclass(frozen=True)
class _Pick:
    """The vectors of some rows (a broadcast sorted array of row numbers)."""

    model: ModelInfo
    index: _RowIndex
    wanted: Any  # Broadcast of sorted int64 rows

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fb = _partition(batches, self.model)
        if fb is None:
            return
        rows = self.index(fb.image_ids)
        keep = np.flatnonzero(np.isin(rows, self.wanted.value))
        if len(keep):
            yield pa.RecordBatch.from_arrays(
                [pa.array(rows[keep], pa.int64()), _blob_column(np.ascontiguousarray(fb.vectors[keep]))],
                names=["row", "vector"],
            )


def _keyed_arrow_schema() -> pa.Schema:
    return pa.schema(
        [("block", pa.int32()), ("query", pa.bool_()), ("row", pa.int64()), ("vector", pa.binary())]
    )


# -- the driver -------------------------------------------------------------------------------------
@dataclass
class _Job:
    spark: SparkSession
    features: DataFrame
    model: ModelInfo
    index: _RowIndex | None = None

    def table(self, df: DataFrame) -> pa.Table:
        return df.toArrow()

    def pick(self, rows: I64) -> dict[int, F32]:
        """The vectors of some rows, by row."""
        assert self.index is not None
        wanted = self.spark.sparkContext.broadcast(np.unique(rows).astype(np.int64))
        try:
            t = self.table(self.features.mapInArrow(_Pick(self.model, self.index, wanted), PICK_SCHEMA))
        finally:
            wanted.unpersist()
        got = _blobs(t.column("vector"), numpy_dtype(self.model.dtype), self.model.dim)
        return {int(r): _f32(v) for r, v in zip(t.column("row").to_numpy(), got, strict=True)}

    def search(self, rows: I64, k: int) -> tuple[I64, F32]:
        """Exact top k (self excluded) of some rows over every partition, merged here."""
        assert self.index is not None
        got = self.pick(rows)
        queries = (
            np.stack([got[int(r)] for r in rows]) if len(rows) else np.zeros((0, self.model.dim), np.float32)
        )
        t = self.table(
            self.features.mapInArrow(_ExactTopK(self.model, self.index, queries, rows, k), TOPK_SCHEMA)
        )
        q = t.column("query").to_numpy()
        r = _blobs(t.column("rows"), np.int64, k)
        s = _blobs(t.column("sims"), np.float32, k)
        parts = np.argsort(q, kind="stable")
        per = np.bincount(q, minlength=len(rows))
        width = int(per.max()) if len(per) else 0
        all_r = np.full((len(rows), width * k), -1, dtype=np.int64)
        all_s = np.full((len(rows), width * k), -np.inf, dtype=np.float32)
        slot = np.zeros(len(rows), dtype=np.int64)
        for i in parts:
            j = int(q[i])
            all_r[j, slot[j] * k : (slot[j] + 1) * k] = r[i]
            all_s[j, slot[j] * k : (slot[j] + 1) * k] = s[i]
            slot[j] += 1
        return d.merge_topk(all_r, all_s, k)


def analyze(
    spark: SparkSession,
    features: DataFrame,
    model: ModelInfo,
    run: RunInfo,
    settings: AnalyticsSettings,
    phases: Phases,
) -> AnalysisResult:
    """Every analysis of the catalogue in ``features`` (listing_id, image_id, vector binary)."""
    job = _Job(spark, features, model)
    seed = settings.seed
    with phases.run("load"):
        n = features.count()
    if n < 2:
        raise ValueError(f"analytics needs at least 2 images of model {run.model}, the store has {n}")
    dim = model.dim
    k = settings.clusters or d.default_clusters(n, settings.max_clusters)
    d.check_clusters(k, n)
    d.check_duplicate_threshold(settings.duplicate_threshold)
    with phases.run("pca"):
        reduce_to = settings.pca_dim if 0 < settings.pca_dim < dim else 0
        sample = _sample_vectors(job, min(n, PCA_SAMPLE), n, seed)
        pca = fit_pca(sample, min(reduce_to, len(sample)), seed) if reduce_to else None
        map_pca = None
        if pca is None and dim > MAP_DIM:
            map_pca = fit_pca(sample, min(MAP_DIM, len(sample)), seed)
    with phases.run("clusters"):
        on_pca = pca is not None and settings.cluster_on_pca
        fraction = min(1.0, 1.2 * 256 * k / n)
        drawn = features.sample(False, fraction, seed) if fraction < 1 else features
        pts_t = job.table(drawn.mapInArrow(_Project(model, pca if on_pca else None), POINTS_SCHEMA))
        width = pca.out_dim if on_pca and pca is not None else dim
        train = _blobs(pts_t.column("point"), np.float32, width)
        reduced = spherical_kmeans(train, k, settings.kmeans_iters, seed, settings.kmeans_redo)
        sums_t = job.table(features.mapInArrow(_CentroidSums(model, pca, reduced, not on_pca), SUMS_SCHEMA))
        sums = np.zeros((k, dim), dtype=np.float64)
        for blob in sums_t.column("sums").to_pylist():
            sums += np.frombuffer(blob, dtype=np.float32).reshape(k, dim)
        centroids = d.normalise_rows(sums.astype(np.float32))
    with phases.run("rows"):
        t = job.table(features.mapInArrow(_Rows(model, pca, map_pca, centroids), ROWS_SCHEMA))
        ids = _blobs(t.column("image_id"), "S16", 1).ravel()
        listings = _blobs(t.column("listing_id"), "S16", 1).ravel()
        order = np.lexsort((ids, listings))
        ids, listings = ids[order].copy(), listings[order].copy()
        labels = t.column("cluster").to_numpy()[order].astype(np.int32)
        sims = t.column("similarity").to_numpy()[order].astype(np.float32)
        misfit = t.column("misfit").to_numpy(zero_copy_only=False)[order].astype(np.float32)
        map_pts = _blobs(t.column("map"), np.float32, _map_width(pca, map_pca, dim))[order]
        del t
        by_image = np.argsort(ids, kind="stable")
        bc_ids = spark.sparkContext.broadcast(ids[by_image])
        bc_rows = spark.sparkContext.broadcast(by_image.astype(np.int64))
        job.index = _RowIndex(bc_ids, bc_rows)
    with phases.run("knn"):
        graph = _knn(job, labels, centroids, n, settings)
    with phases.run("recall"):
        recall = (
            measure_recall_by(job.search, graph, settings.recall_queries, 10, seed)
            if settings.recall_queries
            else None
        )
    with phases.run("outliers"):
        kth, ev_rows, ev_sims = outlier_kth_by(job.search, listings, graph, settings.outlier_k)
        outlier = d.outlier_scores(kth)
    with phases.run("duplicates"):
        edges = d.duplicate_edges(
            np.arange(n, dtype=np.int64), graph.neighbours, graph.sims, settings.duplicate_threshold
        )
        nodes = np.unique(edges)
        got = job.pick(nodes)
        node_vectors = (
            np.stack([got[int(r)] for r in nodes]) if len(nodes) else np.zeros((0, dim), np.float32)
        )
        found = d.duplicate_groups(ids[nodes], node_vectors, np.searchsorted(nodes, edges),
                                   settings.duplicate_threshold)  # fmt: skip
        groups = d.order_groups(
            [(int(nodes[m]), [int(nodes[x]) for x in members]) for m, members in found], ids, listings
        )
    with phases.run("map"):
        xy = map_xy(map_pts, settings.map_sample, settings.map_method, seed)
    with phases.run("assemble"):
        starts = group_starts(listings)
        misfit_rows = d.top_rows(misfit, ids, settings.top_n)
        result = assemble(
            run, ids, listings, labels, sims, centroids, xy, outlier, misfit, groups,
            sims_evidence(ev_rows, ev_sims), _misfit_evidence(job, starts, n, misfit_rows),
            top_n=settings.top_n, outlier_k=settings.outlier_k, threshold=settings.duplicate_threshold,
            alert_percentile=settings.alert_percentile,
        )  # fmt: skip
        bc_ids.unpersist()
        bc_rows.unpersist()
    params = dict(run.params) | {
        "clusters": k,
        "knn_method": graph.method,
        "pca_dim": pca.out_dim if pca else 0,
    }
    return dataclasses.replace(result, run=dataclasses.replace(result.run, params=params, knn_recall=recall))


def _map_width(pca: Pca | None, map_pca: Pca | None, dim: int) -> int:
    if pca is not None:
        return min(MAP_DIM, pca.out_dim)
    return map_pca.out_dim if map_pca is not None else dim


def _sample_vectors(job: _Job, size: int, n: int, seed: int) -> F32:
    """About ``size`` rows' vectors (all when n <= size), at most ``size``."""
    fraction = min(1.0, 1.2 * size / n)
    drawn = job.features.sample(False, fraction, seed) if fraction < 1 else job.features
    t = job.table(drawn)
    v = _blobs(t.column("vector"), numpy_dtype(job.model.dtype), job.model.dim)
    ids = _blobs(t.column("image_id"), "S16", 1).ravel()
    v = v[np.argsort(ids, kind="stable")]  # a fixed order, whatever the partitions' order
    return _f32(v[sample_rows(len(v), size, seed)])


def _knn(job: _Job, labels: I32, centroids: F32, n: int, settings: AnalyticsSettings) -> KnnGraph:
    exact = settings.knn_method == "exact" or (settings.knn_method == "auto" and n <= settings.exact_max)
    if exact:
        blocks, cents, probes = np.zeros(n, np.int32), np.ones((1, 1), np.float32), 1
    else:
        blocks, cents, probes = labels, centroids, settings.knn_probes
    probe = d.probe_clusters(cents, probes)
    receivers: list[list[int]] = [[] for _ in range(len(cents))]
    for b, probed in enumerate(probe):
        for c in probed[1:]:
            receivers[int(c)].append(b)
    sc = job.spark.sparkContext
    bc_labels = sc.broadcast(blocks)
    try:
        assert job.index is not None
        keyed = job.features.mapInArrow(
            _Keyed(job.model, job.index, bc_labels, tuple(tuple(r) for r in receivers)), KEYED_SCHEMA
        )
        # enough partitions that one holds ~256 MB of shuffled vectors (a block is never split)
        shuffled_mb = n * probes * job.model.dim * numpy_dtype(job.model.dtype).itemsize / 2**20
        parts = max(1, min(len(cents), max(2 * sc.defaultParallelism, math.ceil(shuffled_mb / 256))))
        shuffled = keyed.repartition(parts, "block")
        k = settings.knn
        t = job.table(shuffled.mapInArrow(_BlockKnn(job.model.dim, job.model.dtype, k), GRAPH_SCHEMA))
    finally:
        bc_labels.unpersist()
    rows = t.column("row").to_numpy()
    neighbours = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    neighbours[rows] = _blobs(t.column("neighbours"), np.int64, k)
    sims[rows] = _blobs(t.column("sims"), np.float32, k)
    method = "exact" if exact else f"clusters(probes={min(probes, len(cents))})"
    return KnnGraph(neighbours, sims, method)


def _misfit_evidence(job: _Job, starts: I64, n: int, top: I64, m: int = 5) -> Evidence:
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
