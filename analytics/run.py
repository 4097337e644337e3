"""A recorded run: checked inputs, the engine, the store written, then the served run switched."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from analytics import definitions as d
from analytics.local import analyze, load, new_run
from analytics.phases import Phases
from config.settings import AnalyticsSettings, SparkSettings
from schemas.analytics import AnalysisResult, RunInfo
from schemas.records import ModelInfo, utcnow
from store import Store, StoreError
from store.analytics import AnalyticsStore

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def analytics_store(store: Store) -> AnalyticsStore:
    if not hasattr(store, "start_run"):
        raise StoreError(f"the store at {store.url} has no analytics tables (backend {type(store).__name__})")
    return cast(AnalyticsStore, store)


def resolve_model(store: Store, name: str) -> ModelInfo:
    model = store.get_model(name)
    if model is None:
        raise ValueError(f"unknown model {name!r}: the store holds no vectors of it (see `lookalike search`)")
    return model


def run_local(
    store: Store, model_name: str, settings: AnalyticsSettings, *, progress: bool = False
) -> AnalysisResult:
    """Analyse every vector of a model and record the run; it is served only once complete.

    Bad input fails before anything is written; a failure later marks the run failed and leaves
    the previous run served."""

    def work(model: ModelInfo, run: RunInfo, phases: Phases) -> AnalysisResult:
        cat = load(store.scan_features(model), model.dim, store.count("features"), settings, phases)
        if len(cat) == 0:
            raise ValueError(f"the store holds no vectors of model {model.name}")
        return analyze(cat, run, settings, phases)

    return _recorded(store, model_name, settings, "local", work, progress)


def run_spark(
    store: Store,
    model_name: str,
    settings: AnalyticsSettings,
    spark_settings: SparkSettings,
    *,
    progress: bool = False,
    spark: SparkSession | None = None,
) -> AnalysisResult:
    """:func:`run_local` with the Spark job (``analytics.spark``): the same analysis and the same
    recorded run; features read as the search job reads them. ``spark``: a session to use (else
    one for the duration of the run)."""
    from analytics import spark as job
    from search.spark.session import spark_scope

    def work(model: ModelInfo, run: RunInfo, phases: Phases) -> AnalysisResult:
        def on(session: SparkSession) -> AnalysisResult:
            features = job.features_of(session, store.url, model, spark_settings)
            try:
                return job.analyze(session, features, model, run, settings, phases)
            finally:
                features.unpersist()

        if spark is not None:
            return on(spark)
        with spark_scope(spark_settings, "lookalike-analyze", store.url) as session:
            return on(session)

    return _recorded(store, model_name, settings, "spark", work, progress)


Work = Callable[[ModelInfo, RunInfo, Phases], AnalysisResult]


def _recorded(
    store: Store, model_name: str, settings: AnalyticsSettings, engine: str, work: Work, progress: bool
) -> AnalysisResult:
    target = analytics_store(store)
    model = resolve_model(store, model_name)
    d.check_duplicate_threshold(settings.duplicate_threshold)
    capacity = store.count("features")
    if capacity == 0:
        raise ValueError("the store is empty: ingest and extract images first")
    if settings.clusters and settings.clusters > capacity:
        raise ValueError(f"{capacity} images cannot make {settings.clusters} clusters")
    run = new_run(model.name, settings, engine)
    target.start_run(run)
    try:
        with Phases(progress) as phases:
            result = work(model, run, phases)
            with phases.run("write"):
                target.write_result(result)
        done = dataclasses.replace(
            result.run, timings=dict(phases.timings), finished_at=utcnow(), status="complete"
        )
        target.complete_run(done, result.centroids, result.thresholds)
    except BaseException as exc:
        log.warning("analytics run %s failed: %s", run.run_id, exc)
        target.fail_run(run.run_id, f"{type(exc).__name__}: {exc}")
        raise
    log.info("analytics run %s complete: %s", done.run_id, dict(done.counts))
    return dataclasses.replace(result, run=done)
