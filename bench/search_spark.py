"""The Spark job's throughput (query-vector pairs scored per second) on the benchmark data,
against numpy on the same data and against a naive job that scores with a per-row Python UDF."""

from __future__ import annotations

import tempfile
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType

from bench.search_data import Data
from config.settings import SearchSettings, SparkSettings
from schemas.records import FeatureBatch, ModelInfo, StockLevel
from search.scoring import ScoreOptions
from search.spark.job import FEATURES_SCHEMA, _feature_record_batch, score_queries
from search.spark.session import spark_scope
from store import open_store

PARTITIONS = 8
# pyspark looks for pandas-UDF type hints on every typed function; these are plain row UDFs
warnings.filterwarnings("ignore", "Cannot infer the eval type", UserWarning)


@dataclass(frozen=True)
class _Reader:
    """Runs in each task: rows of one partition from the .npy files (memory-mapped)."""

    folder: str
    bounds: tuple[int, ...]

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        vectors = np.load(f"{self.folder}/vectors.npy", mmap_mode="r")
        listings = np.load(f"{self.folder}/listings.npy")
        images = np.load(f"{self.folder}/images.npy")
        for batch in batches:
            for part in batch.column(0).to_pylist():
                lo, hi = self.bounds[part], self.bounds[part + 1]
                for s in range(lo, hi, 4096):
                    e = min(hi, s + 4096)
                    fb = FeatureBatch(listings[s:e], images[s:e], np.asarray(vectors[s:e]))
                    yield _feature_record_batch(fb, "float16")


def _features(spark: SparkSession, folder: str, rows: int) -> DataFrame:
    bounds = tuple(int(b) // 4 * 4 for b in np.linspace(0, rows, PARTITIONS + 1))  # listings whole
    df = spark.range(PARTITIONS, numPartitions=PARTITIONS).mapInArrow(
        _Reader(folder, bounds), FEATURES_SCHEMA
    )
    df = df.cache()
    df.count()
    return df


def _top_k(scored: DataFrame, k: int) -> list[Any]:
    """Max per listing, then the top k listings per query: the same aggregation for both baselines."""
    per_listing = scored.groupBy("query_idx", "listing_id").agg(F.max("score").alias("score"))
    best = Window.partitionBy("query_idx").orderBy(F.col("score").desc(), F.col("listing_id"))
    return per_listing.withColumn("rank", F.row_number().over(best)).where(F.col("rank") <= k).collect()


def naive_pair_job(
    spark: SparkSession, features: DataFrame, queries: npt.NDArray[np.float32], k: int
) -> list[Any]:
    """The textbook naive job: queries cross-joined with the features, one Python call per
    (query, image) row computing its dot product."""
    qb = spark.sparkContext.broadcast(queries)

    @F.udf(FloatType())
    def score_pair(query_idx: int, vector: bytes) -> float:
        return float(qb.value[query_idx] @ np.frombuffer(vector, dtype=np.float16).astype(np.float32))

    query_rows = F.broadcast(spark.range(len(queries)).withColumnRenamed("id", "query_idx"))
    pairs = features.crossJoin(query_rows)
    return _top_k(
        pairs.select("query_idx", "listing_id", score_pair("query_idx", "vector").alias("score")), k
    )


def row_udf_job(
    spark: SparkSession, features: DataFrame, queries: npt.NDArray[np.float32], k: int
) -> list[Any]:
    """A stronger per-row baseline: one Python call per image row, scoring it against every
    query with one BLAS matrix-vector product."""
    qb = spark.sparkContext.broadcast(queries)

    @F.udf(ArrayType(FloatType()))
    def score_row(vector: bytes) -> list[float]:
        v = np.frombuffer(vector, dtype=np.float16).astype(np.float32)
        return [float(x) for x in qb.value @ v]

    return _top_k(
        features.select("listing_id", F.posexplode(score_row("vector")).alias("query_idx", "score")), k
    )


def _timed(job: Any, *args: Any) -> float:
    started = time.perf_counter()
    job(*args)
    return time.perf_counter() - started


def bench_spark(
    data: Data,
    model: ModelInfo,
    queries: npt.NDArray[np.float32],
    rows: int,
    numpy_pairs_s: float,
    naive_rows: int = 10_000,
    naive_queries: int = 16,
) -> dict[str, Any]:
    """The vectorised job and the row-UDF baseline on the first ``rows`` rows and every query;
    the per-pair naive job (slow: a Python call and an 8 kB copy per pair) on ``naive_rows``
    rows and ``naive_queries`` queries. Throughputs are pairs scored per second, so the
    figures compare across sizes."""
    opts = ScoreOptions(k=10)
    naive_rows, naive_queries = min(rows, naive_rows), min(len(queries), naive_queries)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/vectors.npy", data.vectors[:rows])
        np.save(f"{tmp}/listings.npy", data.listing_ids[:rows])
        np.save(f"{tmp}/images.npy", data.image_ids[:rows])
        store = open_store(f"sqlite:///{Path(tmp) / 'spark.db'}")
        store.apply_schema()
        store.put_stock(
            [
                StockLevel(uuid.UUID(bytes=bytes(x).ljust(16, b"\0")), 1, uuid.uuid4())
                for x in np.unique(data.listing_ids[:rows])
            ]
        )
        settings = SparkSettings(master="local[2]", driver_memory="6g")
        dtype = SearchSettings().dtype  # the engine's in-memory dtype
        with spark_scope(settings, "bench-search", store.url) as spark:
            features = _features(spark, tmp, rows)
            score_queries(spark, features, store.url, model, queries[:2], opts, dtype)  # warm the workers
            vectorised_s = _timed(score_queries, spark, features, store.url, model, queries, opts, dtype)
            row_udf_s = _timed(row_udf_job, spark, features, queries, opts.k)
            features.unpersist()
            small = _features(spark, tmp, naive_rows)
            naive_s = _timed(naive_pair_job, spark, small, queries[:naive_queries], opts.k)
        store.close()
    vectorised = rows * len(queries) / vectorised_s
    row_udf = rows * len(queries) / row_udf_s
    naive = naive_rows * naive_queries / naive_s
    return {
        "rows": rows,
        "queries": len(queries),
        "vectorised_pairs_per_s": round(vectorised),
        "vectorised_job_s": round(vectorised_s, 2),
        "numpy_pairs_per_s": round(numpy_pairs_s),
        "naive_pair_udf": {"rows": naive_rows, "queries": naive_queries, "pairs_per_s": round(naive)},
        "row_udf_all_queries_pairs_per_s": round(row_udf),
        "vectorised_vs_naive": round(vectorised / naive, 1),
        "vectorised_vs_row_udf": round(vectorised / row_udf, 1),
        "vectorised_vs_numpy": round(vectorised / numpy_pairs_s, 2),
        "target_met": vectorised / naive >= 20,
    }
