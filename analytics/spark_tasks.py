"""The Spark analytics job's per-partition steps: what runs inside a task, over Arrow batches.

Each step is a frozen dataclass called by ``mapInArrow`` (its fields, the model, the PCA and the
broadcast centroids or row index, are pickled to the executors); each does one matrix product per
partition or block, never a Python call per row. Also the output schemas of the steps and the
blob codec (a 2-D array as one binary value per row) that the driver reads their results with.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from analytics import definitions as d
from analytics.mapping import MAP_DIM
from analytics.pca import Pca
from schemas.records import FeatureBatch, ModelInfo
from search.scoring import group_starts
from search.spark.job import _feature_batch, _features_arrow_schema

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

POINTS_SCHEMA = "point binary"
SUMS_SCHEMA = "sums binary, counts binary"
ROWS_SCHEMA = "image_id binary, listing_id binary, cluster int, similarity float, misfit float, map binary"
KEYED_SCHEMA = "block int, query boolean, row long, vector binary"
GRAPH_SCHEMA = "row long, neighbours binary, sims binary"
TOPK_SCHEMA = "query int, rows binary, sims binary"
PICK_SCHEMA = "row long, vector binary"


def _partition(batches: Iterable[pa.RecordBatch], model: ModelInfo) -> FeatureBatch | None:
    """A partition's rows, a listing's rows contiguous and ordered by image (as the local engine)."""
    table = pa.Table.from_batches(list(batches), schema=_features_arrow_schema())
    if table.num_rows == 0:
        return None
    fb = _feature_batch(table, model)
    order = np.lexsort((fb.image_ids, fb.listing_ids))
    return FeatureBatch(fb.listing_ids[order], fb.image_ids[order], fb.vectors[order])


def f32(v: npt.NDArray[np.floating]) -> F32:
    return np.ascontiguousarray(v, dtype=np.float32)


def _points(vectors: npt.NDArray[np.floating], pca: Pca | None) -> F32:
    return d.normalise_rows(pca.apply(vectors)) if pca is not None else f32(vectors)


def _blob_column(values: npt.NDArray[Any]) -> pa.Array:
    """Rows of a 2-D array as a binary column (one blob per row)."""
    values = np.ascontiguousarray(values)
    n = len(values)
    width = values[0].nbytes if n else 0
    offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int32) * width)
    return pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(values.tobytes())])


def blobs(column: pa.ChunkedArray | pa.Array, dtype: npt.DTypeLike, width: int) -> npt.NDArray[Any]:
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
class Project:
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
class CentroidSums:
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
            sums += onehot @ f32(fb.vectors[s : s + 8192])
        counts = np.bincount(labels, minlength=k).astype(np.int64)
        yield pa.RecordBatch.from_arrays(
            [pa.array([sums.tobytes()], pa.binary()), pa.array([counts.tobytes()], pa.binary())],
            names=["sums", "counts"],
        )


@dataclass(frozen=True)
class Rows:
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
            map_pts = f32(fb.vectors)
        yield pa.RecordBatch.from_arrays(
            [
                _blob_column(fb.image_ids.reshape(-1, 1)),
                _blob_column(fb.listing_ids.reshape(-1, 1)),
                pa.array(labels, pa.int32()),
                pa.array(sims, pa.float32()),
                pa.array(misfit, pa.float32()),
                _blob_column(f32(map_pts)),
            ],
            names=["image_id", "listing_id", "cluster", "similarity", "misfit", "map"],
        )


@dataclass(frozen=True)
class RowIndex:
    """image id -> driver row, broadcast (two arrays: ids sorted, and their rows)."""

    sorted_ids: Any  # Broadcast of S16 array
    rows: Any  # Broadcast of int64 array

    def __call__(self, image_ids: npt.NDArray[np.bytes_]) -> I64:
        ids = self.sorted_ids.value
        pos = np.searchsorted(ids, image_ids)
        out: I64 = self.rows.value[np.minimum(pos, len(ids) - 1)]
        return out


@dataclass(frozen=True)
class Keyed:
    """Each row to its own cluster's block (query) and to the blocks probing its cluster."""

    model: ModelInfo
    index: RowIndex
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
class BlockKnn:
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
        vectors = blobs(table.column("vector"), self.dtype, self.dim)
        order = np.argsort(blocks, kind="stable")
        bounds = np.flatnonzero(np.diff(blocks[order])) + 1
        for group in np.split(order, bounds):
            cand = f32(vectors[group])
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
class ExactTopK:
    """A few broadcast query vectors against every row of the partition: their top k here."""

    model: ModelInfo
    index: RowIndex
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
            r, sc = d.block_topk(self.queries, self.query_rows, f32(fb.vectors[s : s + 16384]),
                                 rows[s : s + 16384], self.k)  # fmt: skip
            best_r, best_s = d.merge_topk(
                np.concatenate([best_r, r], axis=1), np.concatenate([best_s, sc], axis=1), self.k
            )
        yield pa.RecordBatch.from_arrays(
            [pa.array(np.arange(len(self.queries)), pa.int32()), _blob_column(best_r), _blob_column(best_s)],
            names=["query", "rows", "sims"],
        )


@dataclass(frozen=True)
class Pick:
    """The vectors of some rows (a broadcast sorted array of row numbers)."""

    model: ModelInfo
    index: RowIndex
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
