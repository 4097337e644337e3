"""The ``/analytics`` router: its endpoints, and which run each one reads (``resolve_run``).
The response models are in :mod:`api.routers.analytics.responses`."""

from __future__ import annotations

import gzip
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from analytics.fresh import load_state, score_arrivals
from api.deps import AnalyticsDep, IndexDep, StoreDep, read_access
from api.routers.analytics.map_body import gzipped_map
from api.routers.analytics.responses import (
    ClusterOut,
    ClustersOut,
    DuplicateGroupOut,
    ImageAnalysisOut,
    ListingAnalysisOut,
    MapOut,
    MembersOut,
    RunOut,
    RunsOut,
    ScoredOut,
    analysis_out,
    duplicate_group_out,
    listing_image_out,
    scored_out,
)
from schemas.analytics import RunInfo
from schemas.records import FeatureBatch, id_array
from search.engine import UnknownId
from search.tier import SearchIndex
from store import Store
from store.analytics import CENTRAL_KEPT, AnalyticsStore

router = APIRouter(prefix="/analytics", tags=["analytics"], dependencies=[Depends(read_access)])
RunParam = Annotated[uuid.UUID | None, Query(description="a complete run's id; default: the served run")]
Kind = Literal["catalogue", "listing"]


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


# -- runs and clusters -----------------------------------------------------------------------------
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
def clusters(
    analytics: AnalyticsDep,
    index: IndexDep,
    run: RunParam = None,
    central: Annotated[
        int, Query(ge=0, le=CENTRAL_KEPT, description="most central members listed per cluster")
    ] = 0,
) -> ClustersOut:
    """A run's clusters by id: size, cohesion, medoid image, nearest clusters and, with
    ``central``, the images that show each at a glance (most similar to its centroid first)."""
    info = resolve_run(analytics, index, run)
    found = analytics.read_clusters(info.run_id)
    strips = analytics.central_members(info.run_id, central) if central else {}
    out = []
    for c in found:
        row = ClusterOut.model_validate(c.as_json())
        if central:  # a run written before the strips were kept: read from its members
            row.central = (
                strips.get(c.cluster_id) or analytics.cluster_members(info.run_id, c.cluster_id)[:central]
            )
        out.append(row)
    return ClustersOut(run_id=info.run_id, clusters=out)


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


# -- outliers, misfits, duplicates -----------------------------------------------------------------
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
    return scored_out(found, names)


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
    return [duplicate_group_out(g, names, stock) for g in groups]


# -- one image, one listing ------------------------------------------------------------------------
@router.get("/images/{image_id}", response_model=ImageAnalysisOut)
def image(
    image_id: uuid.UUID, analytics: AnalyticsDep, index: IndexDep, store: StoreDep, run: RunParam = None
) -> ImageAnalysisOut:
    """What the run says about one image; an image stored after it is scored now against it."""
    info = resolve_run(analytics, index, run)
    found = analytics.image_analysis(info.run_id, image_id)
    if found is not None:
        return analysis_out(found, store.listing_names([found.listing_id]).get(found.listing_id, ""), False)
    return _fresh_image(image_id, info, analytics, index, store)


def _fresh_image(
    image_id: uuid.UUID, info: RunInfo, analytics: AnalyticsStore, index: SearchIndex, store: Store
) -> ImageAnalysisOut:
    """An image the run has not seen, scored now against it (404 unless the index holds it and
    the run is the one whose state is loaded)."""
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
    return analysis_out(arrival.analysis, name, True, [n.as_json() for n in arrival.duplicates])


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
        min_percentile = _alert_percentile(analytics, info.run_id)
    rows = [
        listing_image_out(r.image_id, analytics.image_analysis(info.run_id, r.image_id), min_percentile)
        for r in sorted(images, key=lambda record: str(record.image_id))
    ]
    stock = store.get_stock([listing_id])
    return ListingAnalysisOut(
        run_id=info.run_id,
        listing_id=listing_id,
        listing_name=store.listing_names([listing_id]).get(listing_id, ""),
        inventory=stock[listing_id].inventory if listing_id in stock else None,
        min_percentile=min_percentile,
        images=rows,
    )


def _alert_percentile(analytics: AnalyticsStore, run_id: uuid.UUID) -> float:
    """The run's alert percentile: the default misfit mark (99 when the run kept no state)."""
    state = analytics.run_model_state(run_id)
    return state[1].alert_percentile if state else 99.0


# -- the 2-D map -----------------------------------------------------------------------------------
@router.get(
    "/map",
    response_model=MapOut,
    responses={200: {"content": {"application/json": {}}, "description": "column arrays of every point"}},
)
def map_points(request: Request, analytics: AnalyticsDep, index: IndexDep, run: RunParam = None) -> Response:
    """Every image of a run on the 2-D map, as compact column arrays (100 000 points: a few MB).
    A run never changes once complete, so the answer is cached per run."""
    info = resolve_run(analytics, index, run)
    body = gzipped_map(request, analytics, info.run_id)
    headers = {"Cache-Control": "private, max-age=3600", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(body, media_type="application/json", headers=headers | {"Content-Encoding": "gzip"})
    return Response(gzip.decompress(body), media_type="application/json", headers=headers)
