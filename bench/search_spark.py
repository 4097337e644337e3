"""The Spark job's throughput (query-vector pairs scored per second) on the benchmark data,
against numpy on the same data and against a naive job that scores with a per-row Python UDF."""

from __future__ import annotations

import tempfile
import time
import uuid
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
from lookalike.settings import SparkSettings
from schemas.records import FeatureBatch, ModelInfo, StockLevel
from search.scoring import ScoreOptions
from search.spark.job import FEATURES_SCHEMA, _feature_record_batch, score_queries
from search.spark.session import spark_scope
from store import open_store

PARTITIONS = 8


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


def naive_job(
    spark: SparkSession, features: DataFrame, queries: npt.NDArray[np.float32], k: int
) -> list[Any]:
    """What the first version did: a Python function per row, then the same aggregation."""
    qb = spark.sparkContext.broadcast(queries)

    @F.udf(ArrayType(FloatType()))
    def score_row(vector: bytes) -> list[float]:
        v = np.frombuffer(vector, dtype=np.float16).astype(np.float32)
        return [float(x) for x in qb.value @ v]

    scored = features.select("listing_id", F.posexplode(score_row("vector")).alias("query_idx", "score"))
    per_listing = scored.groupBy("query_idx", "listing_id").agg(F.max("score").alias("score"))
    best = Window.partitionBy("query_idx").orderBy(F.col("score").desc(), F.col("listing_id"))
    return per_listing.withColumn("rank", F.row_number().over(best)).where(F.col("rank") <= k).collect()


def bench_spark(
    data: Data,
    model: ModelInfo,
    queries: npt.NDArray[np.float32],
    rows: int,
    numpy_pairs_s: float,
    naive_rows: int = 0,
) -> dict[str, Any]:
    """Both jobs on the first ``rows`` rows (the naive one on ``naive_rows`` if given: it is slow)."""
    opts = ScoreOptions(k=10)
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
        with spark_scope(settings, "bench-search", store.url) as spark:
            features = _features(spark, tmp, rows)
            score_queries(spark, features, store.url, model, queries[:2], opts)  # warm the workers
            started = time.perf_counter()
            score_queries(spark, features, store.url, model, queries, opts)
            vectorised_s = time.perf_counter() - started
            features.unpersist()
            naive_rows = min(rows, naive_rows or rows)
            small = _features(spark, tmp, naive_rows)
            started = time.perf_counter()
            naive_job(spark, small, queries, opts.k)
            naive_s = time.perf_counter() - started
        store.close()
    vectorised = rows * len(queries) / vectorised_s
    naive = naive_rows * len(queries) / naive_s
    return {
        "rows": rows,
        "queries": len(queries),
        "vectorised_pairs_per_s": round(vectorised),
        "vectorised_job_s": round(vectorised_s, 2),
        "naive_udf_rows": naive_rows,
        "naive_udf_pairs_per_s": round(naive),
        "numpy_pairs_per_s": round(numpy_pairs_s),
        "vectorised_vs_naive": round(vectorised / naive, 1),
        "vectorised_vs_numpy": round(vectorised / numpy_pairs_s, 2),
        "target_met": vectorised / naive >= 20,
    }
