"""The analytics tables (the AnalyticsStore contract), on SQLite and on Cassandra when
LOOKALIKE_TEST_CASSANDRA is set: a run is served only once complete; a failed run leaves the
previous one served; what was written reads back."""

from __future__ import annotations

import dataclasses
import uuid
from typing import cast

import numpy as np
import pytest

from analytics.local import analyze, new_run
from analytics.phases import Phases
from analytics.synthetic import planted_catalogue
from config.settings import AnalyticsSettings
from schemas.records import utcnow
from store import Store
from store.analytics import CENTRAL_KEPT, AnalyticsStore

pytestmark = pytest.mark.integration


def _result(seed: int):  # type: ignore[no-untyped-def]
    p = planted_catalogue(600, 32, 4, rate=0.01, seed=seed)
    s = AnalyticsSettings(clusters=4, map_method="pca", pca_dim=0, recall_queries=50, top_n=20)
    with Phases() as ph:
        return analyze(p.catalogue, new_run("m", s, "local"), s, ph)


def test_run_lifecycle_and_reads(any_store: Store) -> None:
    sqlite_store = cast(AnalyticsStore, any_store)
    first = _result(1)
    sqlite_store.start_run(first.run)
    sqlite_store.write_result(first)
    assert sqlite_store.current_run("m") is None  # written but not complete: not served
    done = dataclasses.replace(first.run, status="complete", finished_at=utcnow())
    sqlite_store.complete_run(done, first.centroids, first.thresholds)
    served = sqlite_store.current_run("m")
    assert served is not None and served.run_id == first.run.run_id and served.status == "complete"
    clusters = sqlite_store.read_clusters(first.run.run_id)
    assert [c.cluster_id for c in clusters] == [c.cluster_id for c in first.clusters]
    assert sum(c.size for c in clusters) == 600
    members = sqlite_store.cluster_members(first.run.run_id, 0)
    assert len(members) == clusters[0].size
    top = sqlite_store.top_scores(first.run.run_id, "catalogue", 5)
    assert [s.image_id for s in top] == [s.image_id for s in first.outliers[:5]]
    assert top[0].neighbours
    groups = sqlite_store.read_duplicates(first.run.run_id)
    assert [g.images for g in groups] == [g.images for g in first.duplicates]
    one = sqlite_store.image_analysis(first.run.run_id, first.outliers[0].image_id)
    assert one is not None and one.outlier_score == pytest.approx(first.outliers[0].score, abs=1e-5)
    assert one.neighbours and one.cluster_id == int(
        first.images.cluster[list(first.images.image_ids).index(first.outliers[0].image_id.bytes)]
    )
    assert len(sqlite_store.read_assignments(first.run.run_id)) == 600
    assert len(sqlite_store.read_assignments(first.run.run_id, limit=7)) == 7
    cross = sqlite_store.read_duplicates(first.run.run_id, cross_listing=True)
    assert [g.group_id for g in cross] == [g.group_id for g in first.duplicates if g.cross_listing]
    assert [r.run_id for r in sqlite_store.list_runs("m")] == [first.run.run_id]
    state = sqlite_store.run_model_state(first.run.run_id)
    assert state is not None
    np.testing.assert_allclose(state[0], first.centroids, atol=1e-6)
    assert state[1].catalogue_quantiles == pytest.approx(first.thresholds.catalogue_quantiles, abs=1e-5)

    second = _result(2)
    sqlite_store.start_run(second.run)
    sqlite_store.write_result(second)
    sqlite_store.fail_run(second.run.run_id, "interrupted")
    still = sqlite_store.current_run("m")
    assert still is not None and still.run_id == first.run.run_id
    failed = sqlite_store.get_run(second.run.run_id)
    assert failed is not None and failed.status == "failed"
    from store.base import StoreError

    with pytest.raises(StoreError, match="not a running run"):
        sqlite_store.complete_run(second.run, second.centroids, second.thresholds)


def test_central_members_are_the_first_of_each_clusters_members(any_store: Store) -> None:
    analytics = cast(AnalyticsStore, any_store)
    result = _result(3)
    analytics.start_run(result.run)
    analytics.write_result(result)
    run_id = result.run.run_id
    clusters = analytics.read_clusters(run_id)
    members = {c.cluster_id: analytics.cluster_members(run_id, c.cluster_id) for c in clusters}
    assert min(len(m) for m in members.values()) > CENTRAL_KEPT  # every strip is cut, not whole

    for n in (1, 5, CENTRAL_KEPT):
        strips = analytics.central_members(run_id, n)
        assert strips == {c: m[:n] for c, m in members.items()}, n
    assert all(analytics.central_members(run_id, 1)[c.cluster_id] == [c.medoid_image_id] for c in clusters)
    assert analytics.central_members(run_id, 0) == {}
    assert analytics.central_members(uuid.UUID(int=0), 3) == {}  # an unknown run
    with pytest.raises(ValueError, match="n must be"):
        analytics.central_members(run_id, CENTRAL_KEPT + 1)
