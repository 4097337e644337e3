"""Per-image arrays of a run into an :class:`AnalysisResult`: the same for both engines."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from analytics import definitions as d
from schemas.analytics import (
    NO_GROUP,
    AnalysisResult,
    ClusterInfo,
    DuplicateGroup,
    ImageColumns,
    Neighbour,
    RunInfo,
    ScoredImage,
    ScoreKind,
    Thresholds,
)
from schemas.records import as_uuid

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
Evidence = Callable[[I64], Sequence[Sequence[tuple[int, float]]]]  # rows -> [(row, similarity)] each


def clusters_of(
    ids: npt.NDArray[np.bytes_], labels: I32, sims: F32, centroids: F32
) -> tuple[list[ClusterInfo], I32, F32]:
    """Cluster records, numbered by size (largest first, ties by medoid id); empty clusters dropped.
    Returns them with the labels renumbered and the centroids reordered to match."""
    k = len(centroids)
    sizes, sim_sums, _best, medoid_rows = d.cluster_partials(labels, sims, k)
    alive = [c for c in range(k) if sizes[c] > 0]
    alive.sort(key=lambda c: (-int(sizes[c]), bytes(ids[medoid_rows[c]])))
    new_id = np.full(k, -1, dtype=np.int32)
    new_id[alive] = np.arange(len(alive), dtype=np.int32)
    kept = np.ascontiguousarray(centroids[alive])
    nearest = d.nearest_clusters(kept)
    infos = [
        ClusterInfo(
            cluster_id=i,
            size=int(sizes[c]),
            cohesion=float(sim_sums[c] / sizes[c]),
            medoid_image_id=as_uuid(ids[medoid_rows[c]]),
            nearest=nearest[i],
        )
        for i, c in enumerate(alive)
    ]
    return infos, new_id[labels], kept


def scored(
    kind: ScoreKind,
    rows: I64,
    scores: F32,
    pct: F32,
    ids: npt.NDArray[np.bytes_],
    listings: npt.NDArray[np.bytes_],
    evidence: Evidence,
) -> tuple[ScoredImage, ...]:
    found = evidence(rows)
    return tuple(
        ScoredImage(
            kind,
            as_uuid(ids[r]),
            as_uuid(listings[r]),
            float(scores[r]),
            float(pct[r]),
            tuple(Neighbour(as_uuid(ids[j]), as_uuid(listings[j]), float(s)) for j, s in ev),
        )
        for r, ev in zip(rows, found, strict=True)
    )


def assemble(
    run: RunInfo,
    ids: npt.NDArray[np.bytes_],
    listings: npt.NDArray[np.bytes_],
    labels: I32,
    sims: F32,
    centroids: F32,
    xy: F32,
    outlier: F32,
    misfit: F32,
    groups: list[tuple[int, list[int], bool]],
    outlier_evidence: Evidence,
    misfit_evidence: Evidence,
    *,
    top_n: int,
    outlier_k: int,
    threshold: float,
    alert_percentile: float,
) -> AnalysisResult:
    infos, labels, centroids = clusters_of(ids, labels, sims, centroids)
    thresholds = Thresholds(
        outlier_k, threshold, d.score_quantiles(outlier), d.score_quantiles(misfit), alert_percentile
    )
    out_pct = d.percentiles(outlier, thresholds.catalogue_quantiles)
    mis_pct = d.percentiles(misfit, thresholds.listing_quantiles)
    group = np.full(len(ids), NO_GROUP, dtype=np.int32)
    dup = []
    for gid, (medoid, members, cross) in enumerate(groups):
        group[members] = gid
        images = tuple((as_uuid(ids[m]), as_uuid(listings[m])) for m in members)
        dup.append(DuplicateGroup(gid, cross, as_uuid(ids[medoid]), images))
    columns = ImageColumns(
        ids,
        listings,
        labels,
        sims,
        xy[:, 0].copy(),
        xy[:, 1].copy(),
        outlier,
        out_pct,
        misfit,
        mis_pct,
        group,
    )
    outliers = scored(
        "catalogue", d.top_rows(outlier, ids, top_n), outlier, out_pct, ids, listings, outlier_evidence
    )
    misfits = scored(
        "listing", d.top_rows(misfit, ids, top_n), misfit, mis_pct, ids, listings, misfit_evidence
    )
    n_listings = len(np.unique(listings))
    counts = {
        "images": len(ids),
        "listings": n_listings,
        "clusters": len(infos),
        "duplicate_groups": len(dup),
        "cross_listing_groups": sum(g.cross_listing for g in dup),
        "misfit_scored": int(np.count_nonzero(~np.isnan(misfit))),
    }
    run = dataclasses.replace(run, counts={**run.counts, **counts})
    return AnalysisResult(run, tuple(infos), columns, outliers, misfits, tuple(dup), centroids, thresholds)


def misfit_evidence_from(vectors: npt.NDArray[np.floating], starts: I64, m: int = 5) -> Evidence:
    """Evidence of a misfit: the listing's other images, most similar first."""
    ends = np.append(starts[1:], len(vectors))

    def evidence(rows: I64) -> list[list[tuple[int, float]]]:
        out = []
        for r in rows:
            g = int(np.searchsorted(starts, r, side="right") - 1)
            lo, hi = int(starts[g]), int(ends[g])
            others = np.array([j for j in range(lo, hi) if j != r], dtype=np.int64)
            s = np.asarray(vectors[others], dtype=np.float32) @ np.asarray(vectors[r], dtype=np.float32)
            order = np.lexsort((others, -s.astype(np.float64)))[:m]
            out.append([(int(others[i]), float(s[i])) for i in order])
        return out

    return evidence


def sims_evidence(ev_rows: I64, ev_sims: F32) -> Evidence:
    """Evidence of an outlier: its nearest rows of other listings and their similarities."""

    def evidence(rows: I64) -> list[list[tuple[int, float]]]:
        return [
            [(int(j), float(s)) for j, s in zip(ev_rows[r], ev_sims[r], strict=True) if j >= 0] for r in rows
        ]

    return evidence
