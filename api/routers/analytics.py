"""Catalogue analytics, read back: runs, clusters (paged members), outliers and listing misfits,
near-duplicate groups, one image's or one listing's analysis, and the 2-D map.

Every endpoint reads the served run of the index's model unless ``run`` names a complete run.
Shapes are those of the command line's ``--json`` (``lookalike clusters|outliers|duplicates``),
with a few more fields (cohesion, listing names, live stock). An image stored after the run is
scored on the fly against it (``"fresh": true``).
"""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from collections import OrderedDict
from datetime import datetime
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from analytics.fresh import load_state, score_arrivals
from api.deps import AnalyticsDep, IndexDep, StoreDep, read_access
from schemas.analytics import ImageAnalysis, RunInfo, ScoredImage
from schemas.records import FeatureBatch, id_array
from search.engine import UnknownId
from search.tier import SearchIndex
from store.analytics import AnalyticsStore

router = APIRouter(prefix="/analytics", tags=["analytics"], dependencies=[Depends(read_access)])
RunParam = Annotated[uuid.UUID | None, Query(description="a complete run's id; default: the served run")]
Kind = Literal["catalogue", "listing"]
MAP_CACHE_RUNS = 2


# -- response models (the OpenAPI contract) --------------------------------------------------------
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


# -- helpers ---------------------------------------------------------------------------------------
def resolve_run(analytics: AnalyticsStore, index: SearchIndex, run: uuid.UUID | None) -> RunInfo:
    if run is not None:
        found = analytics.get_run(run)
        if found is None:
            raise HTTPException(404, f"no analytics run {run}")
        if found.status != "complete":
            raise HTTPException(409, f"run {run} is {found.status}: only complete runs are served")
        return found
    current = analytics.current_run(index.model.name)
    if current is None:
        raise HTTPException(
            404, f"no analytics run of model {index.model.name!r} yet: run `lookalike analyze` first"
        )
    return current


def _scored(found: list[ScoredImage], names: dict[uuid.UUID, str]) -> list[ScoredOut]:
    return [
        ScoredOut.model_validate(s.as_json() | {"listing_name": names.get(s.listing_id, "")}) for s in found
    ]


def _analysis_out(
    a: ImageAnalysis, name: str, fresh: bool, duplicates: list[object] | None = None
) -> ImageAnalysisOut:
    return ImageAnalysisOut.model_validate(
        a.as_json() | {"listing_name": name, "fresh": fresh, "duplicates": duplicates or []}
    )


# -- endpoints -------------------------------------------------------------------------------------
@router.get("/runs", response_model=RunsOut)
def runs(
    analytics: AnalyticsDep, index: IndexDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> RunsOut:
    """The analysis runs of the index's model, newest first, and which one is served."""
    current = analytics.current_run(index.model.name)
    found = analytics.list_runs(index.model.name, limit)
    return RunsOut(
        current_run_id=current.run_id if current else None,
        runs=[RunOut.model_validate(r.as_json()) for r in found],
    )


@router.get("/runs/{run_id}", response_model=RunOut)
def run_info(run_id: uuid.UUID, analytics: AnalyticsDep) -> RunOut:
    found = analytics.get_run(run_id)
    if found is None:
        raise HTTPException(404, f"no analytics run {run_id}")
    return RunOut.model_validate(found.as_json())


@router.get("/clusters", response_model=ClustersOut)
def clusters(analytics: AnalyticsDep, index: IndexDep, run: RunParam = None) -> ClustersOut:
    """A run's clusters by id: size, cohesion, medoid image, nearest clusters."""
    info = resolve_run(analytics, index, run)
    found = analytics.read_clusters(info.run_id)
    return ClustersOut(run_id=info.run_id, clusters=[ClusterOut.model_validate(c.as_json()) for c in found])


@router.get("/clusters/{cluster_id}/members", response_model=MembersOut)
def cluster_members(
    cluster_id: int,
    analytics: AnalyticsDep,
    index: IndexDep,
    run: RunParam = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MembersOut:
    """A page of a cluster's images, most similar to its centroid first (the medoid leads)."""
    info = resolve_run(analytics, index, run)
    known = {c.cluster_id: c.size for c in analytics.read_clusters(info.run_id)}
    if cluster_id not in known:
        raise HTTPException(
            404, f"run {info.run_id} has no cluster {cluster_id} (its clusters are 0..{len(known) - 1})"
        )
    members = analytics.cluster_members(info.run_id, cluster_id)
    if offset > len(members):
        raise HTTPException(400, f"offset {offset} is past the cluster's {len(members)} members")
    return MembersOut(
        run_id=info.run_id,
        cluster_id=cluster_id,
        size=len(members),
        offset=offset,
        limit=limit,
        members=members[offset : offset + limit],
    )


@router.get("/outliers", response_model=list[ScoredOut])
def outliers(
    analytics: AnalyticsDep,
    index: IndexDep,
    store: StoreDep,
    kind: Annotated[Kind, Query(description="catalogue: outliers; listing: listing misfits")] = "catalogue",
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    run: RunParam = None,
) -> list[ScoredOut]:
    """The strangest images, worst first, each with its nearest images as evidence."""
    info = resolve_run(analytics, index, run)
    found = analytics.top_scores(info.run_id, kind, limit)
    names = dict(store.listing_names(sorted({s.listing_id for s in found}, key=str)))
    return _scored(found, names)


@router.get("/misfits", response_model=list[ScoredOut])
def misfits(
    analytics: AnalyticsDep,
    index: IndexDep,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    run: RunParam = None,
) -> list[ScoredOut]:
    """Images least like the rest of their listing, worst first (``outliers?kind=listing``)."""
    return outliers(analytics, index, store, "listing", limit, run)


@router.get("/duplicates", response_model=list[DuplicateGroupOut])
def duplicates(
    analytics: AnalyticsDep,
    index: IndexDep,
    store: StoreDep,
    cross_listing: Annotated[
        bool | None, Query(description="only cross-listing (true) or within (false)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    run: RunParam = None,
) -> list[DuplicateGroupOut]:
    """Near-duplicate groups, cross-listing first, with listing names and live stock."""
    info = resolve_run(analytics, index, run)
    groups = analytics.read_duplicates(info.run_id, cross_listing)[:limit]
    listings = sorted({lid for g in groups for _, lid in g.images}, key=str)
    names = store.listing_names(listings)
    stock = store.get_stock(listings)
    return [
        DuplicateGroupOut(
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
        for g in groups
    ]


@router.get("/images/{image_id}", response_model=ImageAnalysisOut)
def image(
    image_id: uuid.UUID, analytics: AnalyticsDep, index: IndexDep, store: StoreDep, run: RunParam = None
) -> ImageAnalysisOut:
    """What the run says about one image; an image stored after it is scored now against it."""
    info = resolve_run(analytics, index, run)
    found = analytics.image_analysis(info.run_id, image_id)
    if found is not None:
        return _analysis_out(found, store.listing_names([found.listing_id]).get(found.listing_id, ""), False)
    try:
        listing_id, vector = index.image_vector(image_id)
    except UnknownId:
        raise HTTPException(
            404, f"image {image_id} is neither in run {info.run_id} nor in the index"
        ) from None
    state = load_state(analytics, info.model)
    if state is None or state.run.run_id != info.run_id:
        raise HTTPException(404, f"image {image_id} is not in run {info.run_id} (it arrived after it)")
    batch = FeatureBatch(id_array([listing_id]), id_array([image_id]), vector.reshape(1, -1))
    arrival = score_arrivals(index, state, batch)[0]
    name = store.listing_names([listing_id]).get(listing_id, "")
    return _analysis_out(arrival.analysis, name, True, [n.as_json() for n in arrival.duplicates])


@router.get("/listings/{listing_id}", response_model=ListingAnalysisOut)
def listing(
    listing_id: uuid.UUID,
    analytics: AnalyticsDep,
    index: IndexDep,
    store: StoreDep,
    run: RunParam = None,
    min_percentile: Annotated[
        float | None, Query(ge=0, le=100, description="misfit mark; default: the run's alert percentile")
    ] = None,
) -> ListingAnalysisOut:
    """A listing's images as the run scored them, its misfits marked."""
    info = resolve_run(analytics, index, run)
    images = store.listing_images(listing_id)
    if not images:
        raise HTTPException(404, f"listing {listing_id} has no images in the catalogue")
    if min_percentile is None:
        state = analytics.run_model_state(info.run_id)
        min_percentile = state[1].alert_percentile if state else 99.0
    rows = []
    for record in sorted(images, key=lambda r: str(r.image_id)):
        a = analytics.image_analysis(info.run_id, record.image_id)
        pct = a.misfit_percentile if a else None
        rows.append(
            ListingImageOut(
                image_id=record.image_id,
                cluster_id=a.cluster_id if a else None,
                outlier_score=a.outlier_score if a else None,
                outlier_percentile=a.outlier_percentile if a else None,
                misfit_score=a.misfit_score if a else None,
                misfit_percentile=pct,
                misfit=pct is not None and pct >= min_percentile,
            )
        )
    stock = store.get_stock([listing_id])
    return ListingAnalysisOut(
        run_id=info.run_id,
        listing_id=listing_id,
        listing_name=store.listing_names([listing_id]).get(listing_id, ""),
        inventory=stock[listing_id].inventory if listing_id in stock else None,
        min_percentile=min_percentile,
        images=rows,
    )


@router.get(
    "/map",
    response_model=MapOut,
    responses={200: {"content": {"application/json": {}}, "description": "column arrays of every point"}},
)
def map_points(request: Request, analytics: AnalyticsDep, index: IndexDep, run: RunParam = None) -> Response:
    """Every image of a run on the 2-D map, as compact column arrays (100 000 points: a few MB).
    A run never changes once complete, so the answer is cached per run."""
    info = resolve_run(analytics, index, run)
    cache: MapCache = _map_cache(request)
    body = cache.get(info.run_id)
    if body is None:
        body = gzip.compress(map_json(analytics, info.run_id), compresslevel=5)
        cache.put(info.run_id, body)
    headers = {"Cache-Control": "private, max-age=3600", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(body, media_type="application/json", headers=headers | {"Content-Encoding": "gzip"})
    return Response(gzip.decompress(body), media_type="application/json", headers=headers)


def map_json(analytics: AnalyticsStore, run_id: uuid.UUID) -> bytes:
    rows = analytics.read_assignments(run_id)
    rows.sort(key=lambda a: (a.cluster_id, a.image_id.bytes))
    listing_ids = sorted({a.listing_id for a in rows}, key=lambda u: u.bytes)
    where = {lid: i for i, lid in enumerate(listing_ids)}
    x = np.array([a.x or 0.0 for a in rows], dtype=np.float64)
    y = np.array([a.y or 0.0 for a in rows], dtype=np.float64)
    doc = {
        "run_id": str(run_id),
        "count": len(rows),
        "x": np.round(x, 4).tolist(),
        "y": np.round(y, 4).tolist(),
        "cluster": [a.cluster_id for a in rows],
        "image_ids": [str(a.image_id) for a in rows],
        "listing": [where[a.listing_id] for a in rows],
        "listing_ids": [str(u) for u in listing_ids],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class MapCache:
    """The last few runs' map bodies, gzipped (a complete run never changes)."""

    def __init__(self, size: int = MAP_CACHE_RUNS) -> None:
        self.size, self._bodies, self._lock = size, OrderedDict[uuid.UUID, bytes](), threading.Lock()

    def get(self, run_id: uuid.UUID) -> bytes | None:
        with self._lock:
            body = self._bodies.get(run_id)
            if body is not None:
                self._bodies.move_to_end(run_id)
            return body

    def put(self, run_id: uuid.UUID, body: bytes) -> None:
        with self._lock:
            self._bodies[run_id] = body
            while len(self._bodies) > self.size:
                self._bodies.popitem(last=False)


def _map_cache(request: Request) -> MapCache:
    state = request.app.state
    if getattr(state, "analytics_map_cache", None) is None:
        state.analytics_map_cache = MapCache()
    cache: MapCache = state.analytics_map_cache
    return cache
