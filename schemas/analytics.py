"""Typed records of a catalogue analysis (contracts: the store, the engines, the CLI and the API share them).

Scores are distances: ``1 - cosine similarity`` (vectors are L2-normalised), so higher is worse.
A percentile is the share of the run's images (in percent) whose score is at most this one.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
import numpy.typing as npt

from schemas.records import as_uuid

RunStatus = Literal["running", "complete", "failed"]
RUN_STATUSES: tuple[str, ...] = ("running", "complete", "failed")
ScoreKind = Literal["catalogue", "listing"]
SCORE_KINDS: tuple[str, ...] = ("catalogue", "listing")
NO_GROUP = -1  # an image in no duplicate group
F32 = npt.NDArray[np.float32]


def _r(x: float) -> float:
    return round(float(x), 6)


@dataclass(frozen=True)
class RunInfo:
    """One analysis run (the `analytics_runs` table)."""

    run_id: uuid.UUID
    model: str
    params: Mapping[str, object]  # the settings it ran with (engine, k, threshold, ...)
    started_at: datetime
    finished_at: datetime | None = None
    status: RunStatus = "running"
    counts: Mapping[str, int] = field(default_factory=dict)  # images, listings, clusters, ...
    timings: Mapping[str, float] = field(default_factory=dict)  # "<phase>_s" seconds, "<phase>_peak_mb"
    knn_recall: float | None = None  # recall@10 of the kNN graph against exact search, on a sample

    def __post_init__(self) -> None:
        if self.status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, got {self.status!r}")

    def as_json(self) -> dict[str, object]:
        return {
            "run_id": str(self.run_id),
            "model": self.model,
            "params": dict(self.params),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "status": self.status,
            "counts": dict(self.counts),
            "timings": {k: _r(v) for k, v in self.timings.items()},
            "knn_recall": None if self.knn_recall is None else _r(self.knn_recall),
        }


@dataclass(frozen=True)
class ClusterInfo:
    """One spherical k-means cluster."""

    cluster_id: int
    size: int
    cohesion: float  # mean cosine similarity of its members to its centroid
    medoid_image_id: uuid.UUID  # the member most similar to the centroid
    nearest: tuple[tuple[int, float], ...]  # (cluster_id, centroid similarity), most similar first

    def as_json(self, members: Sequence[uuid.UUID] | None = None) -> dict[str, object]:
        out: dict[str, object] = {
            "cluster_id": self.cluster_id,
            "size": self.size,
            "cohesion": _r(self.cohesion),
            "medoid_image_id": str(self.medoid_image_id),
            "nearest": [{"cluster_id": c, "similarity": _r(s)} for c, s in self.nearest],
        }
        if members is not None:
            out["members"] = [str(m) for m in members]
        return out


@dataclass(frozen=True)
class Assignment:
    """An image's cluster and its place on the 2-D map."""

    image_id: uuid.UUID
    listing_id: uuid.UUID
    cluster_id: int
    similarity: float  # to its cluster's centroid
    x: float
    y: float

    def as_json(self) -> dict[str, object]:
        return {
            "image_id": str(self.image_id),
            "listing_id": str(self.listing_id),
            "cluster_id": self.cluster_id,
            "similarity": _r(self.similarity),
            "x": _r(self.x),
            "y": _r(self.y),
        }


@dataclass(frozen=True)
class Neighbour:
    """Evidence for a score: a near image (of another listing for outliers, of the same for misfits)."""

    image_id: uuid.UUID
    listing_id: uuid.UUID
    score: float  # cosine similarity to the scored image

    def as_json(self) -> dict[str, object]:
        return {"image_id": str(self.image_id), "listing_id": str(self.listing_id), "score": _r(self.score)}


@dataclass(frozen=True)
class ScoredImage:
    """A catalogue outlier (kind "catalogue") or a listing misfit (kind "listing")."""

    kind: ScoreKind
    image_id: uuid.UUID
    listing_id: uuid.UUID
    score: float  # 1 - similarity; higher is stranger
    percentile: float  # 0..100
    neighbours: tuple[Neighbour, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in SCORE_KINDS:
            raise ValueError(f"score kind must be one of {SCORE_KINDS}, got {self.kind!r}")

    def as_json(self) -> dict[str, object]:
        return {
            "image_id": str(self.image_id),
            "listing_id": str(self.listing_id),
            "score": _r(self.score),
            "percentile": round(self.percentile, 3),
            "neighbours": [n.as_json() for n in self.neighbours],
        }


@dataclass(frozen=True)
class DuplicateGroup:
    """Near-duplicate images; cross_listing when they belong to more than one listing."""

    group_id: int
    cross_listing: bool
    medoid_image_id: uuid.UUID
    images: tuple[tuple[uuid.UUID, uuid.UUID], ...]  # (image_id, listing_id), medoid first

    def as_json(self, listing_names: Mapping[uuid.UUID, str] | None = None) -> dict[str, object]:
        names = listing_names or {}
        return {
            "group_id": self.group_id,
            "cross_listing": self.cross_listing,
            "medoid_image_id": str(self.medoid_image_id),
            "images": [
                {"image_id": str(i), "listing_id": str(lid), "listing_name": names.get(lid, "")}
                for i, lid in self.images
            ],
        }


@dataclass(frozen=True)
class Thresholds:
    """What scoring one new image against a finished run needs, besides its centroids."""

    outlier_k: int  # the k-th nearest image of other listings
    duplicate_similarity: float  # pairs at or above this are near-duplicates
    catalogue_quantiles: tuple[float, ...]  # outlier score at percentiles 0, 1, ..., 100
    listing_quantiles: tuple[float, ...]  # misfit score at percentiles 0, 1, ..., 100 (empty: none)
    alert_percentile: float = 99.0  # an arriving image at or past this outlier percentile alerts

    def percentile(self, kind: ScoreKind, score: float) -> float:
        """Where a score falls among the run's scores of this kind (0..100), interpolated."""
        q = self.catalogue_quantiles if kind == "catalogue" else self.listing_quantiles
        return quantile_rank(q, score)

    def as_json(self) -> dict[str, object]:
        return {
            "outlier_k": self.outlier_k,
            "duplicate_similarity": _r(self.duplicate_similarity),
            "catalogue_quantiles": [_r(v) for v in self.catalogue_quantiles],
            "listing_quantiles": [_r(v) for v in self.listing_quantiles],
            "alert_percentile": self.alert_percentile,
        }

    @staticmethod
    def from_json(data: Mapping[str, object]) -> Thresholds:
        def floats(key: str) -> tuple[float, ...]:
            raw = data.get(key, [])
            assert isinstance(raw, list)
            return tuple(float(v) for v in raw)

        return Thresholds(
            outlier_k=int(str(data["outlier_k"])),
            duplicate_similarity=float(str(data["duplicate_similarity"])),
            catalogue_quantiles=floats("catalogue_quantiles"),
            listing_quantiles=floats("listing_quantiles"),
            alert_percentile=float(str(data.get("alert_percentile", 99.0))),
        )


def quantile_rank(quantiles: Sequence[float], score: float) -> float:
    """Percentile (0..100) of a score given the scores at percentiles 0..100 (sorted)."""
    if not quantiles:
        return 0.0
    n = len(quantiles) - 1
    if score < quantiles[0]:
        return 0.0
    if score >= quantiles[-1]:
        return 100.0
    i = bisect.bisect_right(quantiles, score) - 1  # quantiles[i] <= score < quantiles[i + 1]
    lo, hi = quantiles[i], quantiles[i + 1]
    frac = 0.0 if hi <= lo else (score - lo) / (hi - lo)
    return 100.0 * (i + frac) / n


@dataclass(frozen=True)
class ImageAnalysis:
    """Everything a run says about one image (also what scoring a new arrival answers)."""

    image_id: uuid.UUID
    listing_id: uuid.UUID
    run_id: uuid.UUID
    cluster_id: int
    cluster_similarity: float
    outlier_score: float
    outlier_percentile: float
    misfit_score: float | None = None  # None: its listing has fewer than 3 images
    misfit_percentile: float | None = None
    duplicate_group_id: int | None = None
    x: float | None = None
    y: float | None = None
    neighbours: tuple[Neighbour, ...] = ()  # nearest images of other listings

    def as_json(self) -> dict[str, object]:
        return {
            "image_id": str(self.image_id),
            "listing_id": str(self.listing_id),
            "run_id": str(self.run_id),
            "cluster_id": self.cluster_id,
            "cluster_similarity": _r(self.cluster_similarity),
            "outlier_score": _r(self.outlier_score),
            "outlier_percentile": round(self.outlier_percentile, 3),
            "misfit_score": None if self.misfit_score is None else _r(self.misfit_score),
            "misfit_percentile": None if self.misfit_percentile is None else round(self.misfit_percentile, 3),
            "duplicate_group_id": self.duplicate_group_id,
            "x": None if self.x is None else _r(self.x),
            "y": None if self.y is None else _r(self.y),
            "neighbours": [n.as_json() for n in self.neighbours],
        }


@dataclass(frozen=True)
class ImageColumns:
    """Per-image results of a run, column-wise (a million images need no million objects).

    Row i of every array is one image; ``misfit`` is NaN where the listing has < 3 images,
    ``group`` is NO_GROUP where the image is in no duplicate group.
    """

    image_ids: npt.NDArray[np.bytes_]  # S16
    listing_ids: npt.NDArray[np.bytes_]  # S16
    cluster: npt.NDArray[np.int32]
    similarity: F32  # to the cluster centroid
    x: F32
    y: F32
    outlier: F32
    outlier_pct: F32
    misfit: F32
    misfit_pct: F32
    group: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return len(self.image_ids)

    def assignments(self) -> Iterator[Assignment]:
        for i in range(len(self)):
            yield Assignment(
                as_uuid(self.image_ids[i]),
                as_uuid(self.listing_ids[i]),
                int(self.cluster[i]),
                float(self.similarity[i]),
                float(self.x[i]),
                float(self.y[i]),
            )

    def analysis(self, row: int, run_id: uuid.UUID, neighbours: tuple[Neighbour, ...] = ()) -> ImageAnalysis:
        misfit = float(self.misfit[row])
        has_misfit = not np.isnan(misfit)
        group = int(self.group[row])
        return ImageAnalysis(
            image_id=as_uuid(self.image_ids[row]),
            listing_id=as_uuid(self.listing_ids[row]),
            run_id=run_id,
            cluster_id=int(self.cluster[row]),
            cluster_similarity=float(self.similarity[row]),
            outlier_score=float(self.outlier[row]),
            outlier_percentile=float(self.outlier_pct[row]),
            misfit_score=misfit if has_misfit else None,
            misfit_percentile=float(self.misfit_pct[row]) if has_misfit else None,
            duplicate_group_id=None if group == NO_GROUP else group,
            x=float(self.x[row]),
            y=float(self.y[row]),
            neighbours=neighbours,
        )


@dataclass(frozen=True)
class AnalysisResult:
    """A whole run: what the engines produce and the store records."""

    run: RunInfo
    clusters: tuple[ClusterInfo, ...]
    images: ImageColumns
    outliers: tuple[ScoredImage, ...]  # kind "catalogue", worst first (the top N kept)
    misfits: tuple[ScoredImage, ...]  # kind "listing", worst first (the top N kept)
    duplicates: tuple[DuplicateGroup, ...]  # cross-listing groups first, then by size
    centroids: F32  # (clusters, dim), L2-normalised, in the vectors' own space
    thresholds: Thresholds

    def scored(self, kind: ScoreKind) -> tuple[ScoredImage, ...]:
        return self.outliers if kind == "catalogue" else self.misfits

    def cluster_members(self, cluster_id: int) -> list[uuid.UUID]:
        rows = np.flatnonzero(self.images.cluster == cluster_id)
        return [as_uuid(self.images.image_ids[r]) for r in rows]


def clusters_json(
    run_id: uuid.UUID,
    clusters: Sequence[ClusterInfo],
    members: Mapping[int, Sequence[uuid.UUID]] | None = None,
) -> dict[str, object]:
    """``lookalike clusters --json``: members only when asked (``--members``)."""
    rows = []
    for c in clusters:
        row: dict[str, object] = {
            "cluster_id": c.cluster_id,
            "size": c.size,
            "medoid_image_id": str(c.medoid_image_id),
        }
        if members is not None:
            row["members"] = [str(m) for m in members.get(c.cluster_id, ())]
        rows.append(row)
    return {"run_id": str(run_id), "clusters": rows}


def scored_json(images: Sequence[ScoredImage]) -> list[dict[str, object]]:
    """``lookalike outliers --json``: worst first."""
    return [s.as_json() for s in sorted(images, key=lambda s: -s.score)]


def duplicates_json(
    groups: Sequence[DuplicateGroup], listing_names: Mapping[uuid.UUID, str]
) -> list[dict[str, object]]:
    """``lookalike duplicates --json``."""
    out = []
    for g in groups:
        row = g.as_json(listing_names)
        del row["medoid_image_id"]
        out.append(row)
    return out
