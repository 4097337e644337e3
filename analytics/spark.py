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

This module is the public job (``features_of``, ``analyze``: one function per phase); the steps
that run inside the tasks are in ``analytics.spark_tasks``, the driver's passes over the cached
features (sample, pick, exact search, kNN graph, misfit evidence) in ``analytics.spark_driver``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pyspark.sql import DataFrame, SparkSession

from analytics import definitions as d
from analytics.assemble import assemble, sims_evidence
from analytics.clusters import spherical_kmeans
from analytics.knn import KnnGraph, measure_recall_by, outlier_kth_by
from analytics.local import PCA_SAMPLE
from analytics.mapping import MAP_DIM, map_xy
from analytics.pca import Pca, fit_pca
from analytics.phases import Phases
from analytics.spark_driver import Job, knn_graph, misfit_evidence, sample_vectors
from analytics.spark_tasks import POINTS_SCHEMA, ROWS_SCHEMA, SUMS_SCHEMA, CentroidSums, Project, Rows, blobs
from config.settings import AnalyticsSettings, SparkSettings
from schemas.analytics import AnalysisResult, RunInfo
from schemas.records import ModelInfo
from search.scoring import group_starts
from search.spark.job import load_features

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]


def features_of(
    spark: SparkSession, store_url: str, model: ModelInfo, settings: SparkSettings | None = None
) -> DataFrame:
    """The model's vectors as the search job reads them (cached)."""
    return load_features(spark, store_url, model, 0, settings)


def analyze(
    spark: SparkSession,
    features: DataFrame,
    model: ModelInfo,
    run: RunInfo,
    settings: AnalyticsSettings,
    phases: Phases,
) -> AnalysisResult:
    """Every analysis of the catalogue in ``features`` (listing_id, image_id, vector binary)."""
    job = Job(spark, features, model)
    seed = settings.seed
    with phases.run("load"):
        n = features.count()
    if n < 2:
        raise ValueError(f"analytics needs at least 2 images of model {run.model}, the store has {n}")
    k = settings.clusters or d.default_clusters(n, settings.max_clusters)
    d.check_clusters(k, n)
    d.check_duplicate_threshold(settings.duplicate_threshold)
    with phases.run("pca"):
        pca, map_pca = _fit_pca(job, n, settings)
    with phases.run("clusters"):
        on_pca = pca is not None and settings.cluster_on_pca
        reduced = _train_kmeans(job, pca if on_pca else None, k, n, settings)
        centroids = _full_centroids(job, pca, reduced, on_pca)
    with phases.run("rows"):
        rows = _rows(job, pca, map_pca, centroids)
        job.index_rows(rows.ids)
    with phases.run("knn"):
        graph = knn_graph(job, rows.labels, centroids, n, settings)
    with phases.run("recall"):
        recall = (
            measure_recall_by(job.search, graph, settings.recall_queries, 10, seed)
            if settings.recall_queries
            else None
        )
    with phases.run("outliers"):
        kth, ev_rows, ev_sims = outlier_kth_by(job.search, rows.listings, graph, settings.outlier_k)
        outlier = d.outlier_scores(kth)
    with phases.run("duplicates"):
        groups = _duplicate_groups(job, rows, graph, settings.duplicate_threshold)
    with phases.run("map"):
        xy = map_xy(rows.map_pts, settings.map_sample, settings.map_method, seed)
    with phases.run("assemble"):
        starts = group_starts(rows.listings)
        misfit_rows = d.top_rows(rows.misfit, rows.ids, settings.top_n)
        result = assemble(
            run, rows.ids, rows.listings, rows.labels, rows.sims, centroids, xy, outlier, rows.misfit, groups,
            sims_evidence(ev_rows, ev_sims), misfit_evidence(job, starts, n, misfit_rows),
            top_n=settings.top_n, outlier_k=settings.outlier_k, threshold=settings.duplicate_threshold,
            alert_percentile=settings.alert_percentile,
        )  # fmt: skip
        job.unpersist_index()
    params = dict(run.params) | {
        "clusters": k,
        "knn_method": graph.method,
        "pca_dim": pca.out_dim if pca else 0,
    }
    return dataclasses.replace(result, run=dataclasses.replace(result.run, params=params, knn_recall=recall))


def _fit_pca(job: Job, n: int, settings: AnalyticsSettings) -> tuple[Pca | None, Pca | None]:
    """The analysis PCA (when ``pca_dim`` reduces) and, without it, the map's PCA (when the vectors
    are wider than the map), both fitted on one sample of vectors."""
    dim, seed = job.model.dim, settings.seed
    reduce_to = settings.pca_dim if 0 < settings.pca_dim < dim else 0
    sample = sample_vectors(job, min(n, PCA_SAMPLE), n, seed)
    pca = fit_pca(sample, min(reduce_to, len(sample)), seed) if reduce_to else None
    map_pca = None
    if pca is None and dim > MAP_DIM:
        map_pca = fit_pca(sample, min(MAP_DIM, len(sample)), seed)
    return pca, map_pca


def _train_kmeans(job: Job, pca: Pca | None, k: int, n: int, settings: AnalyticsSettings) -> F32:
    """k-means centroids trained on the driver from a sample of points projected in the partitions
    (``pca``: the points' PCA, or None for the full vectors)."""
    seed = settings.seed
    fraction = min(1.0, 1.2 * 256 * k / n)
    drawn = job.features.sample(False, fraction, seed) if fraction < 1 else job.features
    pts_t = job.table(drawn.mapInArrow(Project(job.model, pca), POINTS_SCHEMA))
    width = pca.out_dim if pca is not None else job.model.dim
    train = blobs(pts_t.column("point"), np.float32, width)
    return spherical_kmeans(train, k, settings.kmeans_iters, seed, settings.kmeans_redo)


def _full_centroids(job: Job, pca: Pca | None, reduced: F32, on_pca: bool) -> F32:
    """The full-space centroids of the clusters of ``reduced``: full vectors summed per partition,
    added up here."""
    k, dim = len(reduced), job.model.dim
    sums_t = job.table(
        job.features.mapInArrow(CentroidSums(job.model, pca, reduced, not on_pca), SUMS_SCHEMA)
    )
    sums = np.zeros((k, dim), dtype=np.float64)
    for blob in sums_t.column("sums").to_pylist():
        sums += np.frombuffer(blob, dtype=np.float32).reshape(k, dim)
    return d.normalise_rows(sums.astype(np.float32))


@dataclass(frozen=True)
class _RowColumns:
    """The per-row columns on the driver, in its row order (by listing, then image)."""

    ids: npt.NDArray[np.bytes_]
    listings: npt.NDArray[np.bytes_]
    labels: I32
    sims: F32
    misfit: F32
    map_pts: F32


def _rows(job: Job, pca: Pca | None, map_pca: Pca | None, centroids: F32) -> _RowColumns:
    """Every row's cluster, similarity, misfit and map point, computed in its partition."""
    t = job.table(job.features.mapInArrow(Rows(job.model, pca, map_pca, centroids), ROWS_SCHEMA))
    ids = blobs(t.column("image_id"), "S16", 1).ravel()
    listings = blobs(t.column("listing_id"), "S16", 1).ravel()
    order = np.lexsort((ids, listings))
    return _RowColumns(
        ids=ids[order].copy(),
        listings=listings[order].copy(),
        labels=t.column("cluster").to_numpy()[order].astype(np.int32),
        sims=t.column("similarity").to_numpy()[order].astype(np.float32),
        misfit=t.column("misfit").to_numpy(zero_copy_only=False)[order].astype(np.float32),
        map_pts=blobs(t.column("map"), np.float32, _map_width(pca, map_pca, job.model.dim))[order],
    )


def _map_width(pca: Pca | None, map_pca: Pca | None, dim: int) -> int:
    if pca is not None:
        return min(MAP_DIM, pca.out_dim)
    return map_pca.out_dim if map_pca is not None else dim


def _duplicate_groups(
    job: Job, rows: _RowColumns, graph: KnnGraph, threshold: float
) -> list[tuple[int, list[int], bool]]:
    """Near-duplicate groups from the graph's edges at or above ``threshold`` (the vectors of their
    rows fetched from the partitions)."""
    edges = d.duplicate_edges(
        np.arange(len(graph.neighbours), dtype=np.int64), graph.neighbours, graph.sims, threshold
    )
    nodes = np.unique(edges)
    found = d.duplicate_groups(
        rows.ids[nodes], job.vectors_of(nodes), np.searchsorted(nodes, edges), threshold
    )
    return d.order_groups(
        [(int(nodes[m]), [int(nodes[x]) for x in members]) for m, members in found], rows.ids, rows.listings
    )
