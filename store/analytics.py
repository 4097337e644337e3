"""The analytics part of the store: runs, clusters, per-image results, top scores, duplicate groups.

A run is written while its status is "running" (invisible to readers of the served run), then
``complete_run`` records its end and switches ``analytics_current`` for its model in one step.
A run that fails or is interrupted never becomes current: the previous one stays served.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Protocol

import numpy as np

from schemas.analytics import (
    AnalysisResult,
    ClusterInfo,
    DuplicateGroup,
    ImageAnalysis,
    ImageColumns,
    Neighbour,
    RunInfo,
    ScoredImage,
    ScoreKind,
    Thresholds,
)

ANALYTICS_TABLES = (
    "analytics_runs",
    "analytics_current",
    "analytics_clusters",
    "analytics_assignments",
    "analytics_scores",
    "analytics_duplicates",
    "analytics_cluster_central",
)
CENTRAL_KEPT = 12  # each cluster's most central members kept in analytics_cluster_central


class AnalyticsStore(Protocol):
    """What analytics needs from storage; SQLite and Cassandra implement it."""

    def start_run(self, run: RunInfo) -> None:
        """Record a run as "running" (not served)."""
        ...

    def write_result(self, result: AnalysisResult) -> None:
        """Write a run's clusters, images, top scores and duplicate groups (still not served)."""
        ...

    def complete_run(self, run: RunInfo, centroids: np.ndarray, thresholds: Thresholds) -> None:
        """Mark a run complete and serve it for its model (atomically switch the current run)."""
        ...

    def fail_run(self, run_id: uuid.UUID, reason: str) -> None: ...

    def current_run(self, model: str) -> RunInfo | None:
        """The served run of a model: the last one that completed."""
        ...

    def get_run(self, run_id: uuid.UUID) -> RunInfo | None: ...

    def list_runs(self, model: str | None = None, limit: int = 20) -> list[RunInfo]:
        """Newest first."""
        ...

    def run_model_state(self, run_id: uuid.UUID) -> tuple[np.ndarray, Thresholds] | None:
        """Centroids and thresholds of a complete run: what scoring a new image needs."""
        ...

    def read_clusters(self, run_id: uuid.UUID) -> list[ClusterInfo]:
        """By cluster id."""
        ...

    def cluster_members(self, run_id: uuid.UUID, cluster_id: int) -> list[uuid.UUID]:
        """Most similar to the centroid first (the medoid leads), ties by image id bytes."""
        ...

    def central_members(self, run_id: uuid.UUID, n: int) -> dict[int, list[uuid.UUID]]:
        """Each cluster's ``n`` (at most ``CENTRAL_KEPT``) most central members, as
        ``cluster_members`` orders them, in one read; runs written before these were kept give {}."""
        ...

    def read_assignments(self, run_id: uuid.UUID, limit: int | None = None) -> list[ImageAnalysis]:
        """Per-image results (cluster, map position, scores), in no particular order."""
        ...

    def image_analysis(self, run_id: uuid.UUID, image_id: uuid.UUID) -> ImageAnalysis | None: ...

    def top_scores(self, run_id: uuid.UUID, kind: ScoreKind, limit: int = 50) -> list[ScoredImage]:
        """Worst first: one partition slice."""
        ...

    def read_duplicates(self, run_id: uuid.UUID, cross_listing: bool | None = None) -> list[DuplicateGroup]:
        """Cross-listing groups first, then by size; filter with ``cross_listing``."""
        ...


# -- encodings shared by the backends -------------------------------------------------------------
def neighbours_json(neighbours: Sequence[Neighbour]) -> str:
    return json.dumps([[str(n.image_id), str(n.listing_id), float(np.float32(n.score))] for n in neighbours])


def parse_neighbours(text: str) -> tuple[Neighbour, ...]:
    return tuple(Neighbour(uuid.UUID(i), uuid.UUID(lid), float(s)) for i, lid, s in json.loads(text or "[]"))


def nearest_json(nearest: Sequence[tuple[int, float]]) -> str:
    return json.dumps([[int(c), float(np.float32(s))] for c, s in nearest])


def parse_nearest(text: str) -> tuple[tuple[int, float], ...]:
    return tuple((int(c), float(s)) for c, s in json.loads(text or "[]"))


def group_images_json(images: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> str:
    return json.dumps([[str(i), str(lid)] for i, lid in images])


def parse_group_images(text: str) -> tuple[tuple[uuid.UUID, uuid.UUID], ...]:
    return tuple((uuid.UUID(i), uuid.UUID(lid)) for i, lid in json.loads(text))


def run_fields_json(run: RunInfo) -> tuple[str, str, str]:
    """params, counts, timings as JSON text."""
    return json.dumps(dict(run.params)), json.dumps(dict(run.counts)), json.dumps(dict(run.timings))


def run_from_fields(
    run_id: uuid.UUID,
    model: str,
    params: str,
    started: datetime,
    finished: datetime | None,
    status: str,
    counts: str,
    timings: str,
    knn_recall: float | None,
) -> RunInfo:
    p: Mapping[str, object] = json.loads(params or "{}")
    c: Mapping[str, int] = json.loads(counts or "{}")
    t: Mapping[str, float] = json.loads(timings or "{}")
    return RunInfo(run_id, model, p, started, finished, status, c, t, knn_recall)  # type: ignore[arg-type]


def central_rows(images: ImageColumns, kept: int = CENTRAL_KEPT) -> Iterator[tuple[int, int, int]]:
    """(cluster id, rank, row of ``images``) of each cluster's ``kept`` members most similar to
    its centroid: similarity as stored (float32) descending, then image id bytes, the order
    ``cluster_members`` reads back, so its first ``kept`` and these are the same images."""
    if not len(images):
        return
    cluster = np.asarray(images.cluster)
    order = np.lexsort(
        (np.asarray(images.image_ids, dtype="S16"), -images.similarity.astype(np.float32), cluster)
    )
    sorted_clusters = cluster[order]
    starts = np.flatnonzero(np.r_[True, sorted_clusters[1:] != sorted_clusters[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    for at in np.flatnonzero(rank < kept):
        yield int(sorted_clusters[at]), int(rank[at]), int(order[at])


def bucket(image_id: bytes) -> int:
    """The partition bucket of an image's row in ``analytics_assignments``: its id's first byte."""
    return image_id[0]
