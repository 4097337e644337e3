"""Compact-tier benchmark: memory per image, build time, recall@10 and one-query latency, as JSON.

    python -m bench.search_compact [--rows N] [--dim D] [--queries Q] [--candidates C]
                                   [--nprobe P] [--threads T] [--save]

A synthetic catalogue (bench.compact_data: listings of 4 images around random centres, float16)
is written once into a SQLite store under ``data/bench-compact/`` (reused by later runs) with
its queries and their exact top-10 listings. The compact index is built from the store the
way the service builds it (one streamed scan), then every query is answered once (after a
warm-up), each as one request. Recall@10 is against the exact answers; the index's own
build-time recall (sampled queries) is reported beside it. At 200 000 rows or fewer the exact
in-memory engine is measured on the same store and queries in the same run (``baseline``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.compact_data import Catalogue, prepare
from config.settings import SearchSettings
from schemas.records import FeatureBatch
from search import ann
from search.compact import CompactIndex
from search.compact_build import build_compact
from search.engine import VectorIndex
from search.scoring import ScoreOptions
from search.tier import SearchIndex
from store import Store, open_store

log = logging.getLogger("bench.search_compact")
BASELINE_MAX_ROWS = 200_000
TARGETS = {"recall_at_10": 0.95, "p99_ms": 100.0, "index_bytes_per_image": 1100.0}


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def latencies(index: SearchIndex, queries: np.ndarray, opts: ScoreOptions) -> list[float]:
    index.search(queries[0], opts)  # warm-up
    out = []
    for q in queries:
        started = time.perf_counter()
        index.search(q, opts)
        out.append(time.perf_counter() - started)
    return out


def pct(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {f"p{p}_ms": round(float(np.percentile(ms, p)), 2) for p in (50, 90, 99)}


def recall(index: SearchIndex, queries: np.ndarray, truth: list[list[bytes]]) -> float:
    answers = index.search_many(queries, ScoreOptions(k=10))
    found = sum(len({r.listing_id.bytes for r in a} & set(t)) for a, t in zip(answers, truth, strict=True))
    return round(found / sum(len(t) for t in truth), 4)


def rescored(index: CompactIndex, queries: np.ndarray) -> dict[str, float]:
    """How much one query reads from the store: listings proposed and rows rescored."""
    reads: list[tuple[int, int]] = []
    original = index.store.listings_features

    def counting(ids: Any, model: Any) -> FeatureBatch:
        batch = original(ids, model)
        reads.append((len(ids), len(batch)))
        return batch

    index.store.listings_features = counting  # type: ignore[method-assign,assignment]
    try:
        for q in queries[:20]:
            index.search(q, ScoreOptions(k=10))
    finally:
        index.store.listings_features = original  # type: ignore[method-assign]
    return {
        "listings_read_p50": float(np.median([r[0] for r in reads])),
        "rows_read_p50": float(np.median([r[1] for r in reads])),
    }


def sweep_settings(index: CompactIndex, prepared: Any, settings: SearchSettings) -> list[dict[str, Any]]:
    """Recall@10 and one-query p50 (20 queries) for other nprobe and candidates, same index."""
    out = []
    for nprobe in (32, 64, 128, 256):
        for candidates in (256, 512):
            index.settings = settings.model_copy(
                update={"compact_nprobe": nprobe, "compact_candidates": candidates}
            )
            times = latencies(index, prepared.queries[:20], ScoreOptions(k=10))
            out.append(
                {
                    "nprobe": nprobe,
                    "candidates": candidates,
                    "recall_at_10": recall(index, prepared.queries, prepared.truth),
                    "p50_ms": pct(times)["p50_ms"],
                }
            )
            log.info("sweep: %s", out[-1])
    index.settings = settings
    return out


def bench_compact(
    store: Store, prepared: Any, settings: SearchSettings, sweep: bool = False
) -> dict[str, Any]:
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    index = build_compact(store, prepared.model, settings)
    build_s = time.perf_counter() - started
    gc.collect()
    grown = rss_bytes() - before
    rows = len(index)
    times = latencies(index, prepared.queries, ScoreOptions(k=10))
    out: dict[str, Any] = {
        "settings": {
            k: getattr(settings, k)
            for k in (
                "compact_dims",
                "compact_candidates",
                "compact_nlist",
                "compact_nprobe",
                "compact_train_rows",
            )
        },
        "lists": int(index._view.encoded.codes.index.nlist),
        "build_s": round(build_s, 1),
        "build_rows_per_s": round(rows / build_s),
        "index_mb": round(index.nbytes / 1e6, 1),
        "index_bytes_per_image": round(index.nbytes / rows, 1),
        "rss_growth_bytes_per_image": round(grown / rows, 1),
        "recall_at_10": recall(index, prepared.queries, prepared.truth),
        "recall_at_10_at_build": index.recall_at_10,
        "one_query": pct(times),
        **rescored(index, prepared.queries),
    }
    if sweep:
        out["sweep"] = sweep_settings(index, prepared, settings)
    out["targets_met"] = {
        "recall_at_10": out["recall_at_10"] >= TARGETS["recall_at_10"],
        "p99_ms": out["one_query"]["p99_ms"] <= TARGETS["p99_ms"],
        "index_bytes_per_image": out["index_bytes_per_image"] <= TARGETS["index_bytes_per_image"],
    }
    return out


def bench_memory(store: Store, prepared: Any, settings: SearchSettings) -> dict[str, Any]:
    """The exact in-memory engine on the same store and queries."""
    index = VectorIndex(prepared.model, settings)
    started = time.perf_counter()
    index.reset(list(store.scan_features(prepared.model)))
    load_s = time.perf_counter() - started
    times = latencies(index, prepared.queries, ScoreOptions(k=10))
    vectors = index.main_segment().vectors
    return {
        "load_s": round(load_s, 1),
        "vector_bytes_per_image": vectors.nbytes // max(1, len(vectors)),
        "recall_at_10": recall(index, prepared.queries, prepared.truth),
        "one_query": pct(times),
    }


def run(
    settings: SearchSettings,
    rows: int,
    dim: int = 4096,
    queries: int = 100,
    data_dir: Path = Path("data/bench-compact"),
    sweep: bool = False,
    no_baseline: bool = False,
) -> dict[str, Any]:
    """The compact tier on a synthetic store of ``rows`` vectors (built once, then reused), with
    the exact memory tier on the same store and queries as the baseline up to BASELINE_MAX_ROWS."""
    ann.configure_threads(settings.threads)
    prepared = prepare(Catalogue(rows, dim), data_dir, queries)
    store = open_store(prepared.url)
    result: dict[str, Any] = {
        "device": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, no GPU used",
        "command": f"python -m bench.search_compact --rows {rows} "
        f"--candidates {settings.compact_candidates} --nprobe {settings.compact_nprobe} "
        f"--dims {settings.compact_dims} --threads {settings.threads}" + (" --sweep" if sweep else ""),
        "date": datetime.now(UTC).date().isoformat(),
        "rows": rows,
        "dim": dim,
        "listings": Catalogue(rows, dim).listings,
        "queries": queries,
        "search_threads": settings.threads,
        "store": {
            "backend": "sqlite",
            "db_gb": round(prepared.db_bytes / 1e9, 2),
            "write_s": round(prepared.write_s, 1) if prepared.write_s else "reused",
        },
        "targets": TARGETS,
        "compact": bench_compact(store, prepared, settings, sweep),
    }
    if rows <= BASELINE_MAX_ROWS and not no_baseline:
        result["memory_baseline"] = bench_memory(store, prepared, settings)
    store.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=SearchSettings().compact_candidates)
    parser.add_argument("--nprobe", type=int, default=SearchSettings().compact_nprobe)
    parser.add_argument("--dims", type=int, default=SearchSettings().compact_dims)
    parser.add_argument("--threads", type=int, default=1, help="search threads (1 on a shared machine)")
    parser.add_argument("--data-dir", type=Path, default=Path("data/bench-compact"))
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--sweep", action="store_true", help="also recall and p50 for other nprobe/candidates"
    )
    parser.add_argument("--save", action="store_true", help="write bench/results/search-compact-*.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = SearchSettings(
        threads=args.threads,
        compact_candidates=args.candidates,
        compact_nprobe=args.nprobe,
        compact_dims=args.dims,
    )
    result = run(settings, args.rows, args.dim, args.queries, args.data_dir, args.sweep, args.no_baseline)
    text = json.dumps(result, indent=2)
    print(text)
    if args.save:
        size = f"{args.rows // 1_000_000}m" if args.rows % 1_000_000 == 0 else f"{args.rows // 1000}k"
        path = Path("bench/results") / f"search-compact-cpu-{size}.json"
        path.write_text(text + "\n")
        log.info("saved %s", path)


if __name__ == "__main__":
    main()
