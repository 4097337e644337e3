"""The analytics endpoints' response models (their OpenAPI contract), and how the records that
``schemas.analytics`` and the store hand back become them: listing names, live stock and the
fresh flag added to the command line's ``--json`` shapes."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from schemas.analytics import DuplicateGroup, ImageAnalysis, ScoredImage
from schemas.records import StockLevel


class RunOut(BaseModel):
    run_id: uuid.UUID
    model: str
    params: dict[str, object]
    started_at: datetime
    finished_at: datetime | None
    status: Literal["running", "complete", "failed"]
    counts: dict[str, int]
    timings: dict[str, float] = Field(
        description="seconds per phase (<phase>_s), peak memory (<phase>_peak_mb)"
    )
    knn_recall: float | None = Field(description="recall@10 of the kNN graph against exact search")


class RunsOut(BaseModel):
    current_run_id: uuid.UUID | None = Field(description="the served run of the index's model")
    runs: list[RunOut] = Field(description="newest first")


class NearestOut(BaseModel):
    cluster_id: int
    similarity: float


class ClusterOut(BaseModel):
    cluster_id: int
    size: int
    cohesion: float = Field(description="mean cosine similarity of the members to the centroid")
    medoid_image_id: uuid.UUID
    nearest: list[NearestOut]
    central: list[uuid.UUID] = Field(
        default_factory=list,
        description="its `central` most central members (`clusters?central=N`), the medoid first",
    )


class ClustersOut(BaseModel):
    run_id: uuid.UUID
    clusters: list[ClusterOut]


class MembersOut(BaseModel):
    run_id: uuid.UUID
    cluster_id: int
    size: int
    offset: int
    limit: int
    members: list[uuid.UUID] = Field(description="most similar to the centroid first: the medoid leads")


class NeighbourOut(BaseModel):
    image_id: uuid.UUID
    listing_id: uuid.UUID
    score: float = Field(description="cosine similarity")


class ScoredOut(BaseModel):
    image_id: uuid.UUID
    listing_id: uuid.UUID
    listing_name: str
    score: float = Field(description="1 - similarity: higher is stranger")
    percentile: float
    neighbours: list[NeighbourOut]


class DuplicateImageOut(BaseModel):
    image_id: uuid.UUID
    listing_id: uuid.UUID
    listing_name: str
    inventory: int | None = Field(description="live stock; null when unknown")


class DuplicateGroupOut(BaseModel):
    group_id: int
    cross_listing: bool
    images: list[DuplicateImageOut] = Field(description="the group's medoid first")


class ImageAnalysisOut(BaseModel):
    image_id: uuid.UUID
    listing_id: uuid.UUID
    listing_name: str
    run_id: uuid.UUID
    cluster_id: int
    cluster_similarity: float
    outlier_score: float
    outlier_percentile: float
    misfit_score: float | None
    misfit_percentile: float | None
    duplicate_group_id: int | None
    x: float | None
    y: float | None
    neighbours: list[NeighbourOut] = Field(description="nearest images of other listings")
    fresh: bool = Field(description="stored after the run: scored on arrival against it")
    duplicates: list[NeighbourOut] = Field(description="fresh images: other listings' near-duplicates")


class ListingImageOut(BaseModel):
    image_id: uuid.UUID
    cluster_id: int | None
    outlier_score: float | None
    outlier_percentile: float | None
    misfit_score: float | None
    misfit_percentile: float | None
    misfit: bool = Field(description="its misfit percentile is at or past min_percentile")


class ListingAnalysisOut(BaseModel):
    run_id: uuid.UUID
    listing_id: uuid.UUID
    listing_name: str
    inventory: int | None
    min_percentile: float
    images: list[ListingImageOut]


class MapOut(BaseModel):
    """Column arrays: point i is (x[i], y[i]) in cluster[i], image image_ids[i] of listing
    listing_ids[listing[i]]."""

    run_id: uuid.UUID
    count: int
    x: list[float]
    y: list[float]
    cluster: list[int]
    image_ids: list[str]
    listing: list[int]
    listing_ids: list[str]


# -- from records ----------------------------------------------------------------------------------
def scored_out(found: list[ScoredImage], names: Mapping[uuid.UUID, str]) -> list[ScoredOut]:
    return [
        ScoredOut.model_validate(s.as_json() | {"listing_name": names.get(s.listing_id, "")}) for s in found
    ]


def analysis_out(
    a: ImageAnalysis, name: str, fresh: bool, duplicates: list[object] | None = None
) -> ImageAnalysisOut:
    return ImageAnalysisOut.model_validate(
        a.as_json() | {"listing_name": name, "fresh": fresh, "duplicates": duplicates or []}
    )


def duplicate_group_out(
    g: DuplicateGroup, names: Mapping[uuid.UUID, str], stock: Mapping[uuid.UUID, StockLevel]
) -> DuplicateGroupOut:
    return DuplicateGroupOut(
        group_id=g.group_id,
        cross_listing=g.cross_listing,
        images=[
            DuplicateImageOut(
                image_id=i,
                listing_id=lid,
                listing_name=names.get(lid, ""),
                inventory=stock[lid].inventory if lid in stock else None,
            )
            for i, lid in g.images
        ],
    )


def listing_image_out(image_id: uuid.UUID, a: ImageAnalysis | None, min_percentile: float) -> ListingImageOut:
    """One image of a listing as the run scored it (all null when the run did not see it)."""
    pct = a.misfit_percentile if a else None
    return ListingImageOut(
        image_id=image_id,
        cluster_id=a.cluster_id if a else None,
        outlier_score=a.outlier_score if a else None,
        outlier_percentile=a.outlier_percentile if a else None,
        misfit_score=a.misfit_score if a else None,
        misfit_percentile=pct,
        misfit=pct is not None and pct >= min_percentile,
    )
