"""The Spark search job: score a batch of query vectors against every stored vector.

* ``load_features`` reads ``features`` into a cached DataFrame, one partition per shard
  of listings (a listing never spans partitions, its rows stay contiguous);
* ``score_queries`` scores each partition with one matrix product over Arrow batches,
  aggregates per listing inside the partition (no shuffle of vectors), keeps each
  partition's top k per query, joins live stock, takes the global top k and writes
  ``query_results`` from the partitions.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from config.settings import SparkSettings
from schemas.codec import l2_normalise, numpy_dtype
from schemas.records import FeatureBatch, ModelInfo, QueryAnswer
from search import kernel, scoring
from search.scoring import ScoreOptions
from search.spark.cassandra import read_features, uses_connector
from store import ResultRow, open_store
from store.base import matches_json, parse_matches
from store.results import answer_from_rows

FEATURES_SCHEMA = "listing_id binary, image_id binary, vector binary"
CANDIDATES_SCHEMA = "query_idx int, listing_id binary, score float, matches string"
RESULTS_SCHEMA = f"{CANDIDATES_SCHEMA}, inventory int, rank int, listing_name string"


def load_features(
    spark: SparkSession,
    store_url: str,
    model: ModelInfo,
    shards: int = 0,
    settings: SparkSettings | None = None,
) -> DataFrame:
    """Every vector of ``model`` as a cached DataFrame (vectors kept in their stored dtype):
    through spark-cassandra-connector when configured, else the store's own shard scans
    run inside Spark tasks."""
    if settings is not None and uses_connector(settings, store_url):
        return read_features(spark, store_url, model).cache()
    n = shards or 2 * spark.sparkContext.defaultParallelism

    def read(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        store = open_store(store_url)
        try:
            for shard_batch in batches:
                for shard in shard_batch.column(0).to_pylist():
                    for fb in store.scan_features(model, int(shard), n):
                        yield _feature_record_batch(fb, model.dtype)
        finally:
            store.close()

    return spark.range(n, numPartitions=n).mapInArrow(read, FEATURES_SCHEMA).cache()


def _fixed_width_column(raw: bytes, n: int, width: int) -> pa.Array:
    """n blobs of ``width`` bytes each as an Arrow binary column, built from one buffer."""
    offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int32) * width)
    return pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(raw)])


def _fixed_width_values(column: pa.Array | pa.ChunkedArray) -> memoryview:
    """The inverse: the bytes of every blob of a fixed-width binary column, one slice."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)
    first, last = offsets[column.offset], offsets[column.offset + len(column)]
    return memoryview(column.buffers()[2])[first:last]


def _feature_record_batch(fb: FeatureBatch, dtype: str) -> pa.RecordBatch:
    vectors = np.ascontiguousarray(fb.vectors, dtype=numpy_dtype(dtype))
    n = len(fb)
    return pa.RecordBatch.from_arrays(
        [
            _fixed_width_column(fb.listing_ids.tobytes(), n, 16),
            _fixed_width_column(fb.image_ids.tobytes(), n, 16),
            _fixed_width_column(vectors.tobytes(), n, vectors.shape[1] * vectors.itemsize),
        ],
        names=["listing_id", "image_id", "vector"],
    )


def _feature_batch(table: pa.Table, model: ModelInfo) -> FeatureBatch:
    """Zero-copy views over the Arrow buffers; vectors stay in their stored dtype."""
    vectors = np.frombuffer(_fixed_width_values(table.column("vector")), numpy_dtype(model.dtype))
    return FeatureBatch(
        np.frombuffer(_fixed_width_values(table.column("listing_id")), dtype="S16"),
        np.frombuffer(_fixed_width_values(table.column("image_id")), dtype="S16"),
        vectors.reshape(table.num_rows, model.dim),
    )


@dataclass(frozen=True)
class _Scorer:
    """Runs inside each task: everything it needs is in these (pickled) fields."""

    queries: npt.NDArray[np.float32]
    opts: ScoreOptions
    model: ModelInfo
    allowed: frozenset[bytes] | None  # in-stock listing ids, when filtering
    dtype: str = "float16"  # vectors scored in the engine's in-memory dtype, for the same answer

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches(list(batches), schema=_features_arrow_schema())
        if table.num_rows == 0:
            return
        fb = _feature_batch(table, self.model)
        order = np.lexsort((fb.image_ids, fb.listing_ids))  # a listing's rows contiguous, as in the engine
        listing_rows, image_ids = fb.listing_ids[order], fb.image_ids[order]
        vectors = kernel.narrow(fb.vectors[order], numpy_dtype(self.dtype))
        starts = scoring.group_starts(listing_rows)
        listing_ids = listing_rows[starts]
        allowed = np.ones(len(starts), dtype=bool)
        if self.allowed is not None:
            allowed = np.isin(listing_ids, np.array(sorted(self.allowed), dtype="S16"))
        scores = kernel.score(vectors, self.queries)  # (rows, queries): one matrix product
        out: dict[str, list[object]] = {
            "query_idx": [],
            "listing_id": [],
            "score": [],
            "matches": [],
        }
        for q in range(scores.shape[1]):
            for r in scoring.ranked(scores[:, q], starts, listing_ids, image_ids, allowed, self.opts):
                out["query_idx"].append(q)
                out["listing_id"].append(r.listing_id.bytes)
                out["score"].append(r.score)
                out["matches"].append(matches_json(r.matches))
        yield pa.RecordBatch.from_pydict(out, schema=_candidates_arrow_schema())


def _features_arrow_schema() -> pa.Schema:
    return pa.schema([("listing_id", pa.binary()), ("image_id", pa.binary()), ("vector", pa.binary())])


def _candidates_arrow_schema() -> pa.Schema:
    return pa.schema(
        [
            ("query_idx", pa.int32()),
            ("listing_id", pa.binary()),
            ("score", pa.float32()),
            ("matches", pa.string()),
        ]
    )


@dataclass(frozen=True)
class _Writer:
    """Runs inside each task: names the rows, writes them to ``query_results``, returns them."""

    store_url: str
    query_ids: tuple[str, ...]

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rows = [row for batch in batches for row in batch.to_pylist()]
        if not rows:
            return
        store = open_store(self.store_url)
        try:
            names = store.listing_names([uuid.UUID(bytes=r["listing_id"]) for r in rows])
            by_query: dict[int, list[ResultRow]] = {}
            for r in rows:
                r["listing_name"] = names.get(uuid.UUID(bytes=r["listing_id"]), "")
                by_query.setdefault(r["query_idx"], []).append(_result_row(r))
            for q, result_rows in by_query.items():
                store.write_query_results(uuid.UUID(self.query_ids[q]), result_rows)
        finally:
            store.close()
        yield pa.RecordBatch.from_pylist(rows, schema=_results_arrow_schema())


def _results_arrow_schema() -> pa.Schema:
    return pa.schema(
        [
            *_candidates_arrow_schema(),
            ("inventory", pa.int32()),
            ("rank", pa.int32()),
            ("listing_name", pa.string()),
        ]
    )


def _result_row(r: dict[str, Any]) -> ResultRow:
    return ResultRow(
        float(r["score"]),
        uuid.UUID(bytes=r["listing_id"]),
        r["listing_name"],
        r["inventory"],
        parse_matches(r["matches"]),
    )


def score_queries(
    spark: SparkSession,
    features: DataFrame,
    store_url: str,
    model: ModelInfo,
    queries: npt.NDArray[np.float32],
    opts: ScoreOptions,
    dtype: str,
    in_stock_only: bool = False,
) -> list[QueryAnswer]:
    """Top-k listings for each query row; writes ``query_results`` and returns the answers.
    Vectors are scored in ``dtype`` (the engine's ``LOOKALIKE_SEARCH_DTYPE``, for its answer)."""
    q = l2_normalise(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
    if q.ndim != 2 or q.shape[1] != model.dim:
        raise ValueError(f"query vectors must have {model.dim} columns, got {q.shape[-1]}")
    store = open_store(store_url)
    try:
        levels = store.all_stock()
    finally:
        store.close()
    stock = spark.createDataFrame(
        [(s.listing_id.bytes, s.inventory) for s in levels], "listing_id binary, inventory int"
    )
    allowed = frozenset(s.listing_id.bytes for s in levels if s.inventory > 0) if in_stock_only else None
    best = Window.partitionBy("query_idx").orderBy(F.col("score").desc(), F.col("listing_id").asc())
    top = (
        features.mapInArrow(_Scorer(q, opts, model, allowed, dtype), CANDIDATES_SCHEMA)
        .join(F.broadcast(stock), "listing_id", "left")
        .withColumn("rank", F.row_number().over(best))
        .where(F.col("rank") <= opts.k)
        .select("query_idx", "listing_id", "score", "matches", "inventory", "rank")
    )
    query_ids = tuple(str(uuid.uuid4()) for _ in range(len(q)))
    written = top.repartition(min(len(q), 8), "query_idx").mapInArrow(
        _Writer(store_url, query_ids), RESULTS_SCHEMA
    )
    return _answers([r.asDict() for r in written.collect()], query_ids)


def _answers(rows: list[dict[str, Any]], query_ids: tuple[str, ...]) -> list[QueryAnswer]:
    per_query: dict[int, list[ResultRow]] = {i: [] for i in range(len(query_ids))}
    for r in sorted(rows, key=lambda r: (r["query_idx"], r["rank"])):
        per_query[r["query_idx"]].append(_result_row(r))
    return [answer_from_rows(uuid.UUID(query_ids[i]), res) for i, res in per_query.items()]
