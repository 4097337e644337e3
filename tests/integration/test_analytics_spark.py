"""The Spark analytics job agrees with the local engine on the same store, data and seed
(real Spark local[2], reading the SQLite store as the search job does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from analytics.run import run_local, run_spark
from config.settings import SparkSettings
from schemas.analytics import AnalysisResult
from schemas.records import as_uuid
from store import Store, open_store
from tests.integration.analytics_seed import MODEL, SETTINGS, Seeded, seed_store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("spark-analytics") / "lookalike.db"
    store = open_store(f"sqlite:///{Path(path)}")
    store.apply_schema()
    found = seed_store(store, None, n=1000, clusters=6, seed=4)
    yield store, found
    store.close()


def _labels_by_image(r: AnalysisResult) -> dict[bytes, int]:
    return {bytes(i): int(c) for i, c in zip(r.images.image_ids, r.images.cluster, strict=True)}


def _agree(local: AnalysisResult, spark: AnalysisResult, seeded: Seeded) -> None:
    a, b = _labels_by_image(local), _labels_by_image(spark)
    assert a.keys() == b.keys()
    keys = sorted(a)
    assert adjusted_rand_score([a[k] for k in keys], [b[k] for k in keys]) >= 0.95
    n_out = len(seeded.planted.outliers)
    assert [s.image_id for s in spark.outliers[:n_out]] == [s.image_id for s in local.outliers[:n_out]]
    for s, t in zip(spark.outliers[:n_out], local.outliers[:n_out], strict=True):
        assert s.score == pytest.approx(t.score, abs=1e-4)
    assert [(g.cross_listing, g.images) for g in spark.duplicates] == [
        (g.cross_listing, g.images) for g in local.duplicates
    ]
    assert spark.run.knn_recall is not None and spark.run.knn_recall >= 0.9
    assert spark.run.counts == local.run.counts
    np.testing.assert_allclose(
        sorted(spark.thresholds.catalogue_quantiles), sorted(local.thresholds.catalogue_quantiles), atol=1e-4
    )
    misfit_a = {s.image_id for s in local.misfits[:20]}
    misfit_b = {s.image_id for s in spark.misfits[:20]}
    assert len(misfit_a & misfit_b) >= 19


def test_spark_job_agrees_with_the_local_engine(spark, seeded) -> None:  # type: ignore[no-untyped-def]
    store, found = seeded
    settings = SETTINGS.model_copy(update={"clusters": 6})
    result = run_spark(store, MODEL.name, settings, SparkSettings(master="local[2]"), spark=spark)
    assert result.run.params["engine"] == "spark" and result.run.params["knn_method"] == "exact"
    _agree(found.result, result, found)
    served = store.current_run(MODEL.name)
    assert served is not None and served.run_id == result.run.run_id
    # a planted cross-listing copy is in a cross-listing group
    a, b = found.planted.duplicates[0]
    ids = found.planted.catalogue.image_ids
    pair = {as_uuid(ids[a]), as_uuid(ids[b])}
    assert any(pair <= {i for i, _ in g.images} for g in result.duplicates if g.cross_listing)


def test_spark_job_with_pca_and_cluster_blocks(spark, seeded) -> None:  # type: ignore[no-untyped-def]
    store, found = seeded
    s: Store = store
    settings = SETTINGS.model_copy(
        update={"clusters": 6, "pca_dim": 16, "knn_method": "clusters", "knn_probes": 2}
    )
    local = run_local(s, MODEL.name, settings)
    result = run_spark(s, MODEL.name, settings, SparkSettings(master="local[2]"), spark=spark)
    assert result.run.params["knn_method"] == local.run.params["knn_method"] == "clusters(probes=2)"
    _agree(local, result, found)
