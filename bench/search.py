"""Search benchmark: exact and approximate search, freshness and the Spark job, as JSON.

    python -m bench.search [--rows N | --million] [--dim D] [--no-spark] [--no-freshness] [--no-load]

On synthetic clustered vectors (float16, 4 images a listing), in one run:
* the memory-bandwidth bounds: bytes of the matrix / measured copy bandwidth, and / measured
  *read* bandwidth (a streaming sum over the matrix, the scan's own threads), with 1 and 2
  threads, for the bare scan and the engine's one query (bench.search_scan); numpy float32
  ``X @ q`` on the same data and the previous kernel (widen blocks + torch BLAS) as baselines;
* loading: peak resident memory of loading the index from a SQLite store and of
  ``features import``, each in a fresh child process, against the previous loader
  (bench.search_load);
* exact search, one query and a batch of 64 (p50/p99), against that bound and against a
  numpy brute force of the same definition (widen, matrix product, aggregate per listing);
* FAISS's flat float16 index on the same matrix, for top-10 images and for every score;
* a batch of 64 is compute-bound on a small machine: its bound is also given as flops / the
  measured rate of a float32 matrix product of the kernel's shape;
* approximate search (IVF over float16): recall@10 of listings against exact, and speed-up;
* freshness: a vector written to the store announced on the images topic (embedded broker)
  until the index holds it, p50/p99;
* the Spark job (bench.search_spark) on a batch of 256 queries: query-vector pairs scored per
  second, against numpy, against the naive job (queries cross-joined with the vectors, a Python
  UDF per pair) and against a stronger per-row UDF (one BLAS call per image for every query).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from bench import search_data, search_scan
from config.settings import SearchSettings
from schemas.records import FeatureBatch, ModelInfo
from search import ann, scoring
from search.engine import VectorIndex
from search.scoring import ScoreOptions

log = logging.getLogger("bench.search")
BATCH = 64
COPY_CHUNK_BYTES = 256 << 20


def timings(fn: Callable[[], object], runs: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def pct(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def interleaved(
    x: npt.NDArray[np.float16], fn: Callable[[], object], runs: int
) -> tuple[list[float], list[float]]:
    """Copy times of the matrix and times of ``fn``, alternating, so both see the same load
    on a shared machine."""
    rows = max(1, COPY_CHUNK_BYTES // max(1, x[:1].nbytes))
    dst = np.empty_like(x[:rows])

    def copy() -> None:  # through a bounded buffer: no second matrix in memory
        for start in range(0, len(x), rows):
            part = x[start : start + rows]
            np.copyto(dst[: len(part)], part)

    fn()
    copies, calls = [], []
    for _ in range(runs):
        copies += timings(copy, 1, warmup=0)
        calls += timings(fn, 1, warmup=0)
    return copies, calls


def matmul_flops(dim: int, queries: int) -> float:
    """Floating-point operations per second of a float32 matrix product like the kernel's blocks."""
    a = torch.randn(1024, dim)
    b = torch.randn(dim, queries)
    seconds = min(timings(lambda: torch.mm(a, b), 20))
    return 2 * 1024 * dim * queries / seconds


def numpy_brute_force(
    vectors: npt.NDArray[np.float16], starts: npt.NDArray[np.int64], q: npt.NDArray[np.float32], k: int
) -> list[npt.NDArray[np.int64]]:
    """The plain numpy answer: widen with astype in blocks, one BLAS product each, max per listing."""
    scores = np.empty((len(vectors), len(q)), dtype=np.float32)
    for s in range(0, len(vectors), 4096):
        scores[s : s + 4096] = vectors[s : s + 4096].astype(np.float32) @ q.T
    per_listing = np.maximum.reduceat(scores, starts, axis=0)
    return [np.argsort(-per_listing[:, j], kind="stable")[:k] for j in range(len(q))]


def bench_exact(
    index: VectorIndex, data: search_data.Data, qs: npt.NDArray[np.float32], runs: int
) -> dict[str, Any]:
    opts = ScoreOptions(k=10)
    copies, one = interleaved(data.vectors, lambda: index.search_many(qs[:1], opts), runs)
    bw = data.vectors.nbytes / float(np.median(copies))
    bound_s = data.vectors.nbytes / bw
    default = index.settings  # the full scan (exact_first_pass off)
    index.settings = default.model_copy(update={"exact_first_pass": True})
    before = dict(index.first_pass)
    first_pass = timings(lambda: index.search_many(qs[:1], opts), max(3, runs // 3))
    paths = {path: n - before[path] for path, n in index.first_pass.items()}
    index.settings = default
    batch = timings(lambda: index.search_many(qs[:BATCH], opts), max(3, runs // 5))
    starts = scoring.group_starts(data.listing_ids)
    np_one = timings(lambda: numpy_brute_force(data.vectors, starts, qs[:1], 10), 3, warmup=0)
    np_batch = timings(lambda: numpy_brute_force(data.vectors, starts, qs[:BATCH], 10), 1, warmup=0)
    engine_top = [[r.listing_id.bytes for r in rs] for rs in index.search_many(qs[:8], opts)]
    numpy_top = [
        [bytes(data.listing_ids[starts[i]]).ljust(16, b"\0") for i in t]
        for t in numpy_brute_force(data.vectors, starts, qs[:8], 10)
    ]
    p50_one, p50_batch = float(np.median(one)), float(np.median(batch))
    compute_s = 2 * data.vectors.size * BATCH / matmul_flops(data.vectors.shape[1], BATCH)
    return {
        "copy_bandwidth_gb_s": round(bw / 1e9, 2),
        "bytes_scanned_mb": round(data.vectors.nbytes / 1e6, 1),
        "bandwidth_bound_ms": round(bound_s * 1000, 2),
        "one_query": pct(one) | {"ratio_to_bound": round(p50_one / bound_s, 2)},
        "one_query_faiss_first_pass": pct(first_pass)
        | {"ratio_to_bound": round(float(np.median(first_pass)) / bound_s, 2), "paths": paths},
        f"batch_{BATCH}": pct(batch)
        | {
            "per_query_ms": round(p50_batch / BATCH * 1000, 2),
            "ratio_to_bound": round(p50_batch / bound_s, 2),
            "compute_bound_ms": round(compute_s * 1000, 1),
            "ratio_to_compute_bound": round(p50_batch / max(compute_s, bound_s), 2),
        },
        "numpy_brute_force": {
            "one_query_p50_ms": round(float(np.median(np_one)) * 1000, 1),
            f"batch_{BATCH}_ms": round(np_batch[0] * 1000, 1),
            "engine_speedup_one": round(float(np.median(np_one)) / p50_one, 1),
            f"engine_speedup_batch_{BATCH}": round(np_batch[0] / p50_batch, 1),
            "same_top10_as_engine": engine_top == numpy_top,
        },
        "exact_target_met": p50_one / bound_s <= 1.5,
    }


def bench_faiss_flat(
    engine: VectorIndex, qs: npt.NDArray[np.float32], engine_p50_s: float, runs: int
) -> dict[str, Any]:
    """FAISS alone on the engine's flat float16 index (``IndexScalarQuantizer``, QT_fp16, inner
    product, the same memory): top 10 images (its natural use), and every score (what a
    per-listing aggregation needs), against the engine's exact search."""
    flat = engine.main_segment().flat
    assert flat is not None, "the engine keeps its main segment in a FAISS flat index"
    index = flat.index
    top10 = timings(lambda: index.search(qs[:1], 10), runs)
    every = timings(lambda: index.search(qs[:1], index.ntotal), max(3, runs // 5))
    return {
        "top10_images_p50_ms": round(float(np.median(top10)) * 1000, 2),
        "all_scores_p50_ms": round(float(np.median(every)) * 1000, 2),
        "engine_speedup_vs_all_scores": round(float(np.median(every)) / engine_p50_s, 2),
    }


def bench_approximate(
    data: search_data.Data, model: ModelInfo, qs: npt.NDArray[np.float32], exact_p50_s: float, runs: int
) -> dict[str, Any]:
    settings = SearchSettings(mode="approximate")
    index = VectorIndex(model, settings)
    started = time.perf_counter()
    index.reset([FeatureBatch(data.listing_ids, data.image_ids, data.vectors)])  # type: ignore[arg-type]
    build_s = time.perf_counter() - started
    recall = index.measure_recall(qs[:100])
    opts = ScoreOptions(k=10)
    one = timings(lambda: index.search_many(qs[:1], opts), runs)
    speedup = exact_p50_s / float(np.median(one))
    return {
        "index": f"{settings.ann} nprobe={settings.nprobe} candidates={settings.candidates}",
        "build_s": round(build_s, 1),
        "recall_at_10": round(recall, 4),
        "one_query": pct(one),
        "speedup_vs_exact": round(speedup, 1),
        "target_met": recall >= 0.95 and speedup >= 5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--million", action="store_true", help="1 000 000 rows (about 8 GB of float16)")
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--no-approximate", action="store_true")
    parser.add_argument("--no-freshness", action="store_true")
    parser.add_argument("--no-spark", action="store_true")
    parser.add_argument("--no-compact", action="store_true", help="skip the compact tier")
    parser.add_argument(
        "--compact-rows",
        type=int,
        default=0,
        help="compact tier rows (default 100 000; --million: 1 000 000)",
    )
    parser.add_argument("--no-load", action="store_true", help="skip the load and import memory measures")
    parser.add_argument(
        "--load-rows", type=int, default=100_000, help="rows the load measures use (at most --rows)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="search threads (LOOKALIKE_SEARCH_THREADS); 1 suits a small machine shared with other work, "
        "where a thread team waits on its descheduled members; 0: all cores",
    )
    parser.add_argument("--spark-queries", type=int, default=256, help="queries in the Spark batch")
    parser.add_argument(
        "--naive-rows", type=int, default=10_000, help="rows the per-pair naive UDF job scores"
    )
    parser.add_argument(
        "--naive-queries", type=int, default=16, help="queries the per-pair naive UDF job scores"
    )
    parser.add_argument(
        "--spark-rows", type=int, default=100_000, help="rows the Spark jobs score (at most --rows)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    rows = 1_000_000 if args.million else args.rows
    ann.configure_threads(args.threads)
    started = time.perf_counter()
    data = search_data.make(rows, args.dim)
    qs = search_data.queries(data, 200)
    model = ModelInfo("bench", "1", args.dim, "float16", "random:bench")
    index = VectorIndex(model, SearchSettings())
    index.reset([FeatureBatch(data.listing_ids, data.image_ids, data.vectors)])  # type: ignore[arg-type]
    main = index.main_segment()
    assert np.array_equal(main.image_ids, data.image_ids), "the data is made in the index's order"
    data = dataclasses.replace(data, vectors=np.asarray(main.vectors, np.float16))  # one copy of the matrix
    report: dict[str, Any] = {
        "rows": rows,
        "dim": args.dim,
        "listings": index.listing_count,
        "dtype": "float16",
        "search_threads": torch.get_num_threads(),
    }
    report["data_s"] = round(time.perf_counter() - started, 1)
    report["exact"] = bench_exact(index, data, qs, args.runs)
    exact_p50 = report["exact"]["one_query"]["p50_ms"] / 1000
    report["exact"] |= read_bound_figures(index, data, qs, args.runs, args.threads, exact_p50)
    by_threads = {k: v for k, v in report["exact"]["read_bound"].items() if k.startswith("threads_")}
    mine = by_threads.get(f"threads_{args.threads}", by_threads["threads_1"])
    report["exact"]["one_query"]["ratio_to_read_bound"] = mine["engine_ratio_to_read_bound"]
    report["exact"]["one_query"]["ratio_to_read_bound_by_threads"] = {
        k: v["engine_ratio_to_read_bound"] for k, v in by_threads.items()
    }
    report["exact"]["one_query_faiss_first_pass"]["ratio_to_read_bound"] = mine[
        "engine_first_pass_ratio_to_read_bound"
    ]
    report["exact"]["read_target_met"] = (
        all(
            v["engine_ratio_to_read_bound"] <= 1.2 and v["scan_ratio_to_read_bound"] <= 1.2
            for v in by_threads.values()
        )
        and report["exact"]["scan_speedup_vs_numpy_f32"] >= 1.6
    )
    report["exact"]["faiss_flat_fp16"] = bench_faiss_flat(index, qs, exact_p50, args.runs)
    if not args.no_approximate:
        report["approximate"] = bench_approximate(data, model, qs, exact_p50, args.runs)
    if not args.no_freshness:
        from bench.search_fresh import bench_freshness

        report["freshness"] = bench_freshness(index, model)
    if not args.no_load:
        from bench.search_load import bench_load

        report["load"] = bench_load(data, min(rows, args.load_rows))
    if not args.no_compact:
        from bench import search_compact

        compact_rows = args.compact_rows or (1_000_000 if args.million else 100_000)
        report["compact"] = search_compact.run(SearchSettings(threads=1), compact_rows, args.dim)
    if not args.no_spark:
        from bench.search_spark import bench_spark

        n = min(rows, args.spark_rows)
        sq = search_data.queries(data, args.spark_queries, seed=2)
        numpy_pairs_s = n * len(sq) / _numpy_seconds(data, n, sq)
        report["spark"] = bench_spark(data, model, sq, n, numpy_pairs_s, args.naive_rows, args.naive_queries)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


def read_bound_figures(
    index: VectorIndex,
    data: search_data.Data,
    qs: npt.NDArray[np.float32],
    runs: int,
    threads: int,
    exact_p50_s: float,
) -> dict[str, Any]:
    """The read-bandwidth bound with 1 and 2 threads (the bench's ``--threads`` one on top), the
    batch against the previous kernel, and numpy float32 ``X @ q`` on the same data."""
    per_threads = search_scan.bench_read_bound(index, qs, max(5, runs // 3))
    mine = per_threads.get(f"threads_{threads}", per_threads["threads_1"])
    numpy_s = search_scan.numpy_f32_one_query(data.vectors, qs, 5)
    scan_s = mine["scan_one_query_ms"] / 1000
    return {
        "read_bandwidth_gb_s": mine["read_bandwidth_gb_s"],
        "read_bound_ms": mine["read_bound_ms"],
        "read_bound": per_threads,
        "numpy_f32_one_query_ms": round(numpy_s * 1000, 2),
        "engine_speedup_vs_numpy_f32": round(numpy_s / exact_p50_s, 2),
        "scan_speedup_vs_numpy_f32": round(numpy_s / scan_s, 2),
        f"scan_batch_{BATCH}": search_scan.bench_batch(data.vectors, qs, BATCH, 3),
    }


def _numpy_seconds(data: search_data.Data, n: int, q: npt.NDArray[np.float32]) -> float:
    starts = scoring.group_starts(data.listing_ids[:n])
    return min(timings(lambda: numpy_brute_force(data.vectors[:n], starts, q, 10), 1, warmup=0))


if __name__ == "__main__":
    main()
