"""The local engine: one machine, FAISS, every vector in one buffer."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from analytics import definitions as d
from analytics.assemble import assemble, misfit_evidence_from, sims_evidence
from analytics.clusters import cluster
from analytics.knn import build_graph, exact_search, measure_recall, outlier_kth_by
from analytics.load import Catalogue, load_catalogue
from analytics.mapping import MAP_DIM, map_points, map_xy
from analytics.pca import fit_pca, sample_rows
from analytics.phases import Phases
from config.settings import AnalyticsSettings
from schemas.analytics import AnalysisResult, RunInfo
from schemas.records import FeatureBatch, utcnow

I64 = npt.NDArray[np.int64]
PCA_SAMPLE = 10_000


def new_run(model: str, settings: AnalyticsSettings, engine: str) -> RunInfo:
    params = settings.model_dump(mode="json") | {"engine": engine}
    return RunInfo(uuid.uuid4(), model, params, utcnow())


def load(
    batches: Iterable[FeatureBatch], dim: int, capacity: int, settings: AnalyticsSettings, phases: Phases
) -> Catalogue:
    with phases.run("load", total=capacity or None) as task:
        return load_catalogue(batches, dim, capacity, settings.dtype, on_batch=task.advance)


def analyze(
    cat: Catalogue,
    run: RunInfo,
    settings: AnalyticsSettings,
    phases: Phases,
    extras: dict[str, object] | None = None,
) -> AnalysisResult:
    """Every analysis of one catalogue; each phase timed (``phases.timings``). ``extras``, when
    given, receives the intermediate ``graph`` (KnnGraph), ``pca`` and ``points`` (benchmarks)."""
    n, dim = cat.vectors.shape
    if n < 2:
        raise ValueError(f"analytics needs at least 2 images of model {run.model}, the store has {n}")
    k = settings.clusters or d.default_clusters(n, settings.max_clusters)
    d.check_clusters(k, n)
    d.check_duplicate_threshold(settings.duplicate_threshold)
    seed = settings.seed
    vectors = cat.vectors
    with phases.run("pca"):
        reduce_to = settings.pca_dim if 0 < settings.pca_dim < dim else 0
        rows = sample_rows(n, PCA_SAMPLE, seed)
        pca = fit_pca(vectors[rows], min(reduce_to, len(rows)), seed) if reduce_to else None
        points = d.normalise_rows(pca.apply(vectors)) if pca else np.asarray(vectors, dtype=np.float32)
    with phases.run("clusters"):
        centroids, labels, sims = cluster(
            vectors,
            points if settings.cluster_on_pca else vectors,
            k,
            settings.kmeans_iters,
            seed,
            settings.kmeans_redo,
        )
    with phases.run("knn"):
        graph = build_graph(
            vectors, points, settings.knn, settings.knn_method, settings.exact_max, settings.nprobe, seed,
            labels=labels, centroids=centroids, probes=settings.knn_probes, cache_mb=settings.knn_cache_mb,
        )  # fmt: skip
    if extras is not None:
        extras.update(graph=graph, pca=pca, points=points)
    with phases.run("recall"):
        recall = (
            measure_recall(vectors, graph, settings.recall_queries, 10, seed)
            if settings.recall_queries
            else None
        )
    with phases.run("outliers"):
        kth, ev_rows, ev_sims = outlier_kth_by(
            lambda rows, wide: exact_search(vectors, rows, wide), cat.listing_ids, graph, settings.outlier_k
        )
        outlier = d.outlier_scores(kth)
    with phases.run("misfits"):
        starts = cat.starts
        misfit = np.empty(n, dtype=np.float32)
        for s in range(0, len(starts), 4096):  # by listings, bounded memory
            lo = int(starts[s])
            hi = int(starts[s + 4096]) if s + 4096 < len(starts) else n
            misfit[lo:hi] = d.misfit_scores(vectors[lo:hi], starts[s : s + 4096] - lo)
    with phases.run("duplicates"):
        rows_all = np.arange(n, dtype=np.int64)
        edges = d.duplicate_edges(rows_all, graph.neighbours, graph.sims, settings.duplicate_threshold)
        nodes = np.unique(edges)
        local_edges = np.searchsorted(nodes, edges)
        found = d.duplicate_groups(
            cat.image_ids[nodes], vectors[nodes], local_edges, settings.duplicate_threshold
        )
        groups = d.order_groups(
            [(int(nodes[m]), [int(nodes[x]) for x in members]) for m, members in found],
            cat.image_ids,
            cat.listing_ids,
        )
    with phases.run("map"):
        map_pts = points[:, :MAP_DIM] if pca is not None else map_points(vectors, None, seed)[1]
        xy = map_xy(map_pts, settings.map_sample, settings.map_method, seed)
    with phases.run("assemble"):
        result = assemble(
            run, cat.image_ids, cat.listing_ids, labels, sims, centroids, xy, outlier, misfit, groups,
            sims_evidence(ev_rows, ev_sims), misfit_evidence_from(vectors, starts),
            top_n=settings.top_n, outlier_k=settings.outlier_k, threshold=settings.duplicate_threshold,
            alert_percentile=settings.alert_percentile,
        )  # fmt: skip
    params = dict(run.params) | {
        "clusters": k,
        "knn_method": graph.method,
        "pca_dim": pca.out_dim if pca else 0,
    }
    return _with(result, params, recall)


def _with(result: AnalysisResult, params: dict[str, object], recall: float | None) -> AnalysisResult:
    return dataclasses.replace(result, run=dataclasses.replace(result.run, params=params, knn_recall=recall))
