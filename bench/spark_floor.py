"""What a pass of the Spark search service costs: Spark's own floor, then the scoring pass.

    python -m bench.spark_floor [--master local[2]] [--rows 100000] [--dim 1280] [--save]

On a cached RDD of float16 blocks the size of the service's cache (``rows`` x ``dim``, one
partition a core, as the service lays it out), each job below runs three times and its best time is
kept: a trivial job (the scheduling of one stage of Python tasks), a pass that reads every cached
block into the Python workers and returns one number per partition (what moving the cache from
the JVM to Python costs a pass: ``move_gb_per_s_per_core`` derives from it), the same pass
followed by a ``groupByKey`` stage (the shuffle a batch adds to meet each query's candidates in
one task). Then the same vectors kept resident beside the executor, as the service keeps them
(:mod:`search.spark.resident`: Spark holds a descriptor per partition, each task maps its files;
listings of four images in the service's blocks): a pass that maps them and reads nothing (the
floor of the service's pass), and the service's scoring pass for 1 and for 64 queries. A query
reads every byte of the cache once, so ``resident_over_cache`` is the 1-query scoring pass over
the pass that only copies the cache out of the JVM; the capacity model's rates derive from
them: ``scan_gb_per_s_per_core`` (one query's read of the cache, less the floor) and
``query_core_ms_at_64`` (the core time each further query of a batch of 64 adds). Prints JSON;
``--save`` writes ``bench/results/spark-floor-<master>-<rows/1000>k-<dim>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import SparkSession

from bench import spark_serve
from config.settings import SparkSettings
from schemas.codec import l2_normalise
from search.scoring import SearchRequest
from search.spark import resident
from search.spark.batch import PassTask
from search.spark.blocks import S16, Block
from search.spark.cache import PassScorer
from search.spark.resident import Resident
from search.spark.session import spark_scope

RESULTS = Path(__file__).with_name("results")
RUNS = 3
BLOCK_ROWS = SparkSettings().serve_block_rows


def _best_ms(job: Callable[[], object]) -> float:
    job()  # warm: the Python workers start once
    best = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        job()
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def _figure(x: float) -> float:
    """Four significant digits (a test's tiny cache must not round to zero)."""
    return float(f"{x:.4g}")


def _count(blocks: Iterable[Any]) -> Iterator[int]:
    yield sum(len(b) for b in blocks)


def _keyed(blocks: Iterable[Any]) -> Iterator[tuple[int, int]]:
    n = sum(len(b) for b in blocks)
    yield from ((j, n) for j in range(8))


def _resident_rows(partitions: Iterable[Resident]) -> Iterator[int]:
    """The mapped blocks' rows: the pass's floor (its tasks, the mappings), no vector read."""
    yield sum(b.rows for p in partitions for b in resident.blocks(p))


def _ids(numbers: np.ndarray) -> S16:
    """Distinct 16-byte ids in the numbers' order (big-endian, a non-zero last byte)."""
    raw = np.full((len(numbers), 16), 0xAB, dtype=np.uint8)
    raw[:, :8] = numbers.astype(">u8").view(np.uint8).reshape(-1, 8)
    return raw.view("S16").ravel()


def _service_blocks(x: np.ndarray, partition: int) -> Iterator[Block]:
    """``x`` laid out as the service's cache: listings of four images, blocks of BLOCK_ROWS."""
    for start in range(0, len(x), BLOCK_ROWS):
        rows = np.arange(start, min(len(x), start + BLOCK_ROWS)) + partition * len(x)
        starts = np.arange(0, len(rows), 4, dtype=np.int64)
        yield Block(_ids(rows[starts] // 4), starts, _ids(rows), x[start : start + len(rows)])


def _kept(vectors: Callable[[int], np.ndarray]) -> Callable[[int, Iterable[int]], Iterator[Resident]]:
    def keep(partition: int, _: Iterable[int]) -> Iterator[Resident]:
        blocks = _service_blocks(vectors(partition), partition)
        yield resident.keep(blocks, resident.folder_for("bench-floor", 0, partition), None)

    return keep


def _pass(dim: int, n: int) -> PassTask:
    """The service's pass task for ``n`` queries (default options, no stock filter)."""
    rng = np.random.default_rng(7)
    queries = l2_normalise(rng.standard_normal((n, dim), dtype=np.float32))
    return PassTask(PassScorer(queries, tuple(SearchRequest(q) for q in queries)), None)


def _sizes(groups: Iterable[tuple[int, Iterable[int]]]) -> Iterator[int]:
    yield from (len(list(values)) for _, values in groups)


def measure(spark: SparkSession, rows: int, dim: int) -> dict[str, Any]:
    """The floor on ``spark`` (left running: it may be shared)."""
    sc = spark.sparkContext
    cores = sc.defaultParallelism
    parts = cores
    per = rows // parts

    def block(i: int) -> np.ndarray:
        rng = np.random.default_rng(i)
        return rng.standard_normal((per, dim), dtype=np.float32).astype(np.float16)

    cached = sc.parallelize(range(parts), parts).map(block).cache()
    cached.count()
    trivial = _best_ms(lambda: sc.parallelize(range(parts), parts).map(lambda x: x).collect())
    move = _best_ms(lambda: cached.mapPartitions(_count).collect())
    shuffle = _best_ms(lambda: cached.mapPartitions(_keyed).groupByKey(2).mapPartitions(_sizes).collect())
    cached.unpersist()
    kept = sc.parallelize(range(parts), parts).mapPartitionsWithIndex(_kept(block)).cache()
    kept.count()
    resident_pass = _best_ms(lambda: kept.mapPartitions(_resident_rows).collect())
    one_query, batch_of_64 = _pass(dim, 1), _pass(dim, 64)  # count(): the candidates stay in the tasks
    one = _best_ms(lambda: kept.mapPartitions(one_query).count())
    batch = _best_ms(lambda: kept.mapPartitions(batch_of_64).count())
    kept.unpersist()
    gigabytes = parts * per * dim * 2 / 1e9
    moving_s = max(move - trivial, 1.0) / 1000
    return {
        "master": sc.master,
        "rows": parts * per,
        "dim": dim,
        "partitions": parts,
        "cores": cores,
        "cache_gb": _figure(gigabytes),
        "trivial_job_ms": trivial,
        "pass_reading_cache_ms": move,
        "pass_and_shuffle_ms": shuffle,
        "shuffle_stage_ms": round(shuffle - move, 1),
        "move_gb_per_s_per_core": _figure(gigabytes / moving_s / cores),
        "pass_over_resident_ms": resident_pass,
        "pass_scoring_1_ms": one,
        "resident_over_cache": _figure(one / move),
        "pass_scoring_64_ms": batch,
        "scan_gb_per_s_per_core": _figure(gigabytes / cores / (max(one - resident_pass, 1.0) / 1000)),
        "query_core_ms_at_64": _figure(max(batch - one, 0.0) / 63 * cores),
    }


def driver_memory(master: str, rows: int, dim: int) -> str | None:
    """On ``local[*]`` the driver's JVM is the executor that holds this benchmark's cache of
    blocks persisted in Spark (the service's vectors live outside the JVM): unless
    ``LOOKALIKE_SPARK_DRIVER_MEMORY`` is set, room for twice the float16 cache and 1 GB more
    (at least the 2g default); None where the settings decide (a cluster sizes its executors)."""
    if not master.startswith("local") or "LOOKALIKE_SPARK_DRIVER_MEMORY" in os.environ:
        return None
    return f"{max(2, math.ceil(2 * rows * dim * 2 / 1e9) + 1)}g"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args(argv)
    settings = SparkSettings(master=args.master)
    if (memory := driver_memory(args.master, args.rows, args.dim)) is not None:
        settings = settings.model_copy(update={"driver_memory": memory})
    with spark_scope(settings, "lookalike-bench-spark-floor") as spark:
        result = measure(spark, args.rows, args.dim)
    text = json.dumps(result, indent=2)
    print(text)
    if args.save:
        name = f"spark-floor-{spark_serve.slug(args.master)}-{args.rows // 1000}k-{args.dim}.json"
        (RESULTS / name).write_text(text + "\n")


if __name__ == "__main__":
    main()
