"""Catalogue analytics benchmark (``make bench-analyze``, ``MILLION=1`` for 1 000 000 images).

Synthetic clustered 4096-d vectors with planted truth (``analytics.synthetic.planted_catalogue``:
outliers, cross-listing near-duplicates, listing misfits), analysed by the local engine with the
default settings. Prints JSON:

* time and peak resident memory per phase (load, PCA, k-means, kNN graph, recall, outliers,
  misfits, duplicates, map, assemble, write to a SQLite store);
* quality against the planted truth: clusters ARI / NMI, outlier precision at the number planted,
  cross-listing duplicate pair precision / recall, misfit precision;
* kNN recall@10 against exact search on 1 000 sampled images, and the previous method's
  (candidates from FAISS IVF on the PCA-256 points, rescored) on the same rows;
* the duplicate-threshold sweep (precision / recall of cross-listing pairs of the kNN graph per
  threshold) that calibrates the default;
* k-means: the engine's FAISS spherical k-means against scikit-learn ``KMeans`` (random init) and
  ``MiniBatchKMeans`` on the same training sample of PCA points, and Spark MLlib ``KMeans`` on a
  subsample (time, inertia of every image against each method's centroids, ARI);
* the Spark job against the local engine, end to end on the same SQLite store of a subsample
  (images per second; the Spark job on 2 local cores pays its JVM, Arrow and shuffle overhead).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from analytics import definitions as d
from analytics.clusters import spherical_kmeans
from analytics.knn import KnnGraph, candidate_index, exact_search, recall_rows, rescore
from analytics.local import analyze, new_run
from analytics.pca import Pca, sample_rows
from analytics.phases import Phases, rss_mb
from analytics.synthetic import Planted, planted_catalogue
from config.settings import AnalyticsSettings, SparkSettings
from schemas.analytics import AnalysisResult
from schemas.records import Extracted, ImageRecord, ModelInfo, as_uuid, utcnow

F32 = npt.NDArray[np.float32]
DIM = 4096
THRESHOLDS = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995)


def _r(x: float, n: int = 4) -> float:
    return round(float(x), n)


# -- quality ----------------------------------------------------------------------------------------
def quality(p: Planted, r: AnalysisResult) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    keep = p.labels >= 0
    ids = p.catalogue.image_ids
    key = {bytes(i).ljust(16, b"\0"): row for row, i in enumerate(ids)}
    n_out = len(p.outliers)
    top_out = {key[s.image_id.bytes] for s in r.outliers[:n_out]}
    truth_pairs = {(a, b) for a, b in p.duplicates}
    found_pairs = set()
    for g in r.duplicates:
        if not g.cross_listing:
            continue
        rows = sorted(key[i.bytes] for i, _ in g.images)
        lst = {rows_l: p.catalogue.listing_ids[rows_l] for rows_l in rows}
        found_pairs |= {(a, b) for a in rows for b in rows if a < b and lst[a] != lst[b]}
    anomalies = {*p.misfits.tolist(), *p.outliers.tolist(), *(x for pair in p.duplicates for x in pair)}
    n_mis = len(p.misfits) + len(p.outliers) + len(p.duplicates)
    top_mis = {key[s.image_id.bytes] for s in r.misfits[:n_mis]}
    return {
        "clusters_ari": _r(adjusted_rand_score(p.labels[keep], r.images.cluster[keep])),
        "clusters_nmi": _r(normalized_mutual_info_score(p.labels[keep], r.images.cluster[keep])),
        "outliers_planted": n_out,
        "outlier_precision_at_planted": _r(len(top_out & set(p.outliers.tolist())) / n_out),
        "duplicate_pairs_planted": len(truth_pairs),
        "duplicate_pairs_found": len(found_pairs),
        "duplicate_precision": _r(len(found_pairs & truth_pairs) / max(1, len(found_pairs))),
        "duplicate_recall": _r(len(found_pairs & truth_pairs) / max(1, len(truth_pairs))),
        "misfits_planted": len(p.misfits),
        "misfit_precision_at_planted_anomalies": _r(len(top_mis & anomalies) / n_mis),
        "misfit_recall_of_planted_misfits": _r(len(top_mis & set(p.misfits.tolist())) / len(p.misfits)),
        "how": "outliers: top (number planted) of the run's outliers; misfits: top (misfits + outliers "
        "+ duplicate pairs planted) of the misfit list, any planted anomaly counting (a planted outlier "
        "or a copy from another listing does not fit its listing either); duplicates: pairs of "
        "cross-listing groups across listings against the planted pairs",
    }


def duplicate_sweep(p: Planted, graph: KnnGraph) -> dict[str, Any]:
    """Cross-listing pairs of the kNN graph at each threshold against the planted pairs; the
    calibrated threshold is the middle of the gap between the best non-duplicate pair and the
    weakest planted one (rounded down to 0.01), clipped to the accepted range. Similarities are
    the graph's own (exact), so no vector is gathered."""
    listing = p.catalogue.listing_ids
    truth = {(a, b) for a, b in p.duplicates}
    n, k = graph.neighbours.shape
    a = np.repeat(np.arange(n, dtype=np.int64), k)
    b = graph.neighbours.ravel()
    s = graph.sims.ravel()
    keep = (b >= 0) & np.isfinite(s) & (s >= 0.5)
    a, b, s = a[keep], b[keep], s[keep]
    keep = listing[a] != listing[b]
    lo_, hi_ = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    pairs, first = np.unique(np.stack([lo_, hi_], axis=1), axis=0, return_index=True)
    sims = s[keep][first]
    is_dup = np.array([(int(x), int(y)) in truth for x, y in pairs], dtype=bool)
    sweep = {}
    for t in THRESHOLDS:
        found = sims >= t
        tp = int(np.count_nonzero(found & is_dup))
        sweep[str(t)] = {
            "precision": _r(tp / max(1, int(found.sum()))),
            "recall": _r(tp / max(1, len(truth))),
        }
    best_other = float(sims[~is_dup].max()) if (~is_dup).any() else 0.5
    weakest_dup = float(sims[is_dup].min()) if is_dup.any() else 1.0
    middle = (best_other + weakest_dup) / 2
    lo, hi = d.DUPLICATE_RANGE
    return {
        "best_non_duplicate_cross_listing_similarity": _r(best_other),
        "weakest_planted_duplicate_similarity": _r(weakest_dup),
        "calibrated": _r(min(hi, max(lo, np.floor(middle * 100) / 100)), 2),
        "sweep": sweep,
    }


def old_recall(p: Planted, points: F32, settings: AnalyticsSettings, queries: int) -> float:
    """recall@10 of the previous method on the recall rows: candidates from FAISS IVF (nprobe 16)
    on the PCA points, k + 9 of them, rescored on the full vectors."""
    v = p.catalogue.vectors
    rows = recall_rows(len(v), queries, settings.seed)
    index, _ = candidate_index(points, "ivf", 0, settings.nprobe, settings.seed)
    _, cand = index.search(points[rows], settings.knn + 9)
    ids, _ = rescore(v, rows, cand.astype(np.int64))
    exact, _ = exact_search(v, rows, 10)
    return d.knn_recall(ids, exact, 10)


# -- k-means ----------------------------------------------------------------------------------------
def _evaluate(
    points: F32, centroids: npt.NDArray[np.floating], truth: npt.NDArray[np.int64]
) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    c = np.asarray(centroids, dtype=np.float32)
    cc = np.einsum("ij,ij->i", c, c)
    labels = np.empty(len(points), dtype=np.int64)
    inertia = 0.0
    for s in range(0, len(points), 16384):
        x = points[s : s + 16384]
        dist = np.einsum("ij,ij->i", x, x)[:, None] - 2 * x @ c.T + cc[None, :]
        labels[s : s + 16384] = np.argmin(dist, axis=1)
        inertia += float(np.min(dist, axis=1).clip(0).sum())
    keep = truth >= 0
    return {
        "inertia_all_images": round(inertia, 1),
        "ari": _r(adjusted_rand_score(truth[keep], labels[keep])),
    }


def kmeans_compare(
    points: F32, truth: npt.NDArray[np.int64], k: int, settings: AnalyticsSettings, mllib_rows: int
) -> dict[str, Any]:
    """The same training sample (the engine's: 256 per cluster) for FAISS and scikit-learn; Spark
    MLlib on ``mllib_rows`` of it. 20 iterations, one start each; inertia over every image."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    seed, iters = settings.seed, settings.kmeans_iters
    train = d.normalise_rows(points[sample_rows(len(points), 256 * k, seed)])
    out: dict[str, Any] = {"k": k, "train_rows": len(train), "dim": int(points.shape[1]), "iterations": iters}
    t = time.perf_counter()
    cent = spherical_kmeans(train, k, iters, seed, 1)
    out["faiss_spherical"] = {"s": _r(time.perf_counter() - t, 2)} | _evaluate(points, cent, truth)
    t = time.perf_counter()
    km = KMeans(k, init="random", n_init=1, max_iter=iters, random_state=seed).fit(train)
    out["sklearn_kmeans_random"] = {"s": _r(time.perf_counter() - t, 2)} | _evaluate(
        points, km.cluster_centers_, truth
    )
    t = time.perf_counter()
    mb = MiniBatchKMeans(k, init="random", n_init=1, max_iter=iters, batch_size=4096, random_state=seed)
    mb.fit(train)
    out["sklearn_minibatch"] = {"s": _r(time.perf_counter() - t, 2)} | _evaluate(
        points, mb.cluster_centers_, truth
    )
    out["spark_mllib"] = _mllib(train[:mllib_rows], points, truth, k, iters, seed)
    return out


def _mllib(
    train: F32, points: F32, truth: npt.NDArray[np.int64], k: int, iters: int, seed: int
) -> dict[str, Any]:
    from pyspark.ml.clustering import KMeans as SparkKMeans
    from pyspark.ml.linalg import Vectors

    from search.spark.session import spark_scope

    with spark_scope(SparkSettings(master="local[2]", driver_memory="4g"), "bench-analyze-mllib") as spark:
        df = spark.createDataFrame([(Vectors.dense(row.tolist()),) for row in train], ["features"]).cache()
        df.count()
        t = time.perf_counter()
        model = SparkKMeans(k=k, maxIter=iters, seed=seed, initMode="random", tol=0.0).fit(df)
        seconds = time.perf_counter() - t
        centres = np.array([np.asarray(c) for c in model.clusterCenters()], dtype=np.float32)
    return {"rows": len(train), "s": _r(seconds, 2), "subsampled": True} | _evaluate(points, centres, truth)


# -- the Spark job against the local engine ---------------------------------------------------------
def engines_compare(p: Planted, rows: int, settings: AnalyticsSettings) -> dict[str, Any]:
    """Both engines end to end (scan, analysis, write) on one SQLite store of the first ``rows``."""
    from analytics.run import run_local, run_spark
    from store import open_store

    model = ModelInfo("bench", "1", int(p.catalogue.vectors.shape[1]), "float16", "random:bench")
    cat = p.catalogue
    rows = min(rows, len(cat)) // 5 * 5
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'analytics.db'}")
        store.apply_schema()
        store.put_model(model)
        for s in range(0, rows, 2000):
            batch = []
            for r in range(s, min(rows, s + 2000)):
                lid, iid = as_uuid(cat.listing_ids[r]), as_uuid(cat.image_ids[r])
                rec = ImageRecord(lid, iid, "bench://none", "image/jpeg", 1, 1, 1, utcnow())
                batch.append(Extracted(rec, str(lid)[:8], model.name, cat.vectors[r].astype(np.float32)))
            store.write_extracted(batch, model.dtype)
        t = time.perf_counter()
        local = run_local(store, model.name, settings)
        local_s = time.perf_counter() - t
        t = time.perf_counter()
        spark = run_spark(store, model.name, settings, SparkSettings(master="local[2]", driver_memory="6g"))
        spark_s = time.perf_counter() - t
        store.close()
    a = {bytes(i): int(c) for i, c in zip(local.images.image_ids, local.images.cluster, strict=True)}
    b = {bytes(i): int(c) for i, c in zip(spark.images.image_ids, spark.images.cluster, strict=True)}
    from sklearn.metrics import adjusted_rand_score

    keys = sorted(a)
    return {
        "rows": rows,
        "settings": {"exact_max": settings.exact_max, "knn_probes": settings.knn_probes},
        "local_s": _r(local_s, 1),
        "spark_s": _r(spark_s, 1),
        "local_images_per_s": round(rows / local_s),
        "spark_images_per_s": round(rows / spark_s),
        "spark_vs_local": _r(local_s / spark_s, 2),
        "local_timings_s": {k: _r(v, 2) for k, v in local.run.timings.items() if k.endswith("_s")},
        "spark_timings_s": {k: _r(v, 2) for k, v in spark.run.timings.items() if k.endswith("_s")},
        "agreement": {
            "clusters_ari": _r(adjusted_rand_score([a[k] for k in keys], [b[k] for k in keys])),
            "same_top_outliers": [s.image_id for s in local.outliers[:20]]
            == [s.image_id for s in spark.outliers[:20]],
            "same_duplicate_groups": [g.images for g in local.duplicates]
            == [g.images for g in spark.duplicates],
            "knn_recall_local": local.run.knn_recall,
            "knn_recall_spark": spark.run.knn_recall,
        },
    }


def write_phase(result: AnalysisResult, phases: Phases) -> None:
    """The run written to (and switched on) a SQLite store, as ``lookalike analyze`` does."""
    import dataclasses

    from store import open_store

    with tempfile.TemporaryDirectory() as tmp, phases.run("write"):
        store = open_store(f"sqlite:///{Path(tmp) / 'analytics.db'}")
        store.apply_schema()
        store.start_run(result.run)  # type: ignore[attr-defined]
        store.write_result(result)  # type: ignore[attr-defined]
        done = dataclasses.replace(result.run, status="complete", finished_at=utcnow())
        store.complete_run(done, result.centroids, result.thresholds)  # type: ignore[attr-defined]
        store.close()


def _device() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, no GPU used"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--million", action="store_true", help="1 000 000 images (about 8 GB of float16)")
    parser.add_argument("--mllib-rows", type=int, default=20_000, help="k-means training rows MLlib gets")
    parser.add_argument("--engine-rows", type=int, default=10_000, help="rows of the Spark-vs-local run")
    parser.add_argument("--no-spark", action="store_true")
    parser.add_argument("--no-kmeans", action="store_true")
    parser.add_argument("--save", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    n = 1_000_000 if args.million else args.rows
    # keep every planted anomaly's score in the stored top list: with the default 1 000 kept, the
    # 1M run's "precision at the number planted" (2 000 each) was capped at 1 000 / 2 000
    settings = AnalyticsSettings(top_n=max(AnalyticsSettings().top_n, n // 100))
    k = d.default_clusters(n, settings.max_clusters)
    report: dict[str, Any] = {
        "device": _device(),
        "load_average_at_start": round(os.getloadavg()[0], 2),  # > cores: timings are shared
        "command": "make bench-analyze" + (" MILLION=1" if args.million else ""),
        "date": time.strftime("%Y-%m-%d"),
        "rows": n,
        "dim": args.dim,
        "clusters_planted": k,
    }
    t = time.perf_counter()
    p = planted_catalogue(n, args.dim, k, rate=0.002, noise=0.6, seed=0)
    report["data_s"] = _r(time.perf_counter() - t, 1)
    report["data_rss_mb"] = round(rss_mb())
    report["settings"] = settings.model_dump(mode="json")
    extras: dict[str, Any] = {}
    t = time.perf_counter()
    with Phases() as phases:
        with phases.run("load"):
            cat = p.catalogue  # already in memory: the scan of a store is measured in "engines"
        result = analyze(cat, new_run("bench", settings, "local"), settings, phases, extras)
        write_phase(result, phases)
    total = time.perf_counter() - t
    report["local"] = {
        "total_s": _r(total, 1),
        "phases_s": {k: _r(v, 2) for k, v in phases.timings.items() if k.endswith("_s")},
        "phases_peak_mb": {k: round(v) for k, v in phases.timings.items() if k.endswith("_peak_mb")},
        "knn_method": result.run.params.get("knn_method"),
        "knn_recall_at_10": result.run.knn_recall,
        "target_s": 900 if args.million else 90,
    }
    report["local"]["target_met"] = total <= report["local"]["target_s"]
    report["quality"] = quality(p, result)
    graph: KnnGraph = extras["graph"]
    points: F32 = extras["points"]
    pca: Pca | None = extras["pca"]
    t = time.perf_counter()
    report["knn"] = {
        "recall_at_10": result.run.knn_recall,
        "queries": settings.recall_queries,
        "method": result.run.params.get("knn_method"),
        "previous_method_recall_at_10": _r(old_recall(p, points, settings, settings.recall_queries)),
        "previous_method": "FAISS IVF (nprobe 16) on the PCA-256 points, k + 9 candidates rescored",
        "pca_dim": pca.out_dim if pca else 0,
    }
    report["knn"]["previous_method_measure_s"] = _r(time.perf_counter() - t, 1)
    report["duplicate_threshold"] = duplicate_sweep(p, graph) | {"default": settings.duplicate_threshold}
    q = report["quality"]
    report["targets"] = {
        "knn_recall_ge_0_9": (result.run.knn_recall or 0) >= 0.9,
        "outliers_precision_ge_0_9": q["outlier_precision_at_planted"] >= 0.9,
        "duplicates_precision_recall_ge_0_9": q["duplicate_precision"] >= 0.9
        and q["duplicate_recall"] >= 0.9,
        "time": report["local"]["target_met"],
    }
    del extras, graph
    if not args.no_kmeans:
        report["kmeans"] = kmeans_compare(
            points if settings.cluster_on_pca else np.asarray(p.catalogue.vectors, np.float32),
            p.labels,
            k,
            settings,
            args.mllib_rows,
        )
        report["kmeans"]["note"] = (
            "all on the engine's PCA-256 normalised points; FAISS (the engine's spherical k-means, "
            "greedy k-means++ seeds) and scikit-learn on the same training sample (256 per "
            "cluster), MLlib on its first --mllib-rows rows (a Python list "
            "of DenseVectors into the JVM is the slow part, not measured); inertia and ARI of every "
            "image against each method's centroids"
        )
    del points
    if not args.no_spark:
        engine_settings = settings.model_copy(update={"exact_max": 5000})
        report["engines"] = engines_compare(p, args.engine_rows, engine_settings)
        report["engines"]["note"] = (
            "both engines end to end on one SQLite store of the first --engine-rows images (scan, "
            "analysis, write), exact_max lowered so both use the cluster-block kNN as at scale"
        )
    text = json.dumps(report, indent=2)
    sys.stdout.write(text + "\n")
    if args.save:
        args.save.write_text(text + "\n")


if __name__ == "__main__":
    main()
