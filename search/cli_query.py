"""``lookalike search`` and ``lookalike features import``: queries and imports against the
stored catalogue, through the engine."""

from __future__ import annotations

from pathlib import Path

from lookalike import stack
from lookalike.settings import ModelSettings
from schemas.ids import parse_uuid
from schemas.records import QueryAnswer
from search.engine import load_index
from search.scoring import Aggregation, ScoreOptions
from search.service import Query, SearchService
from search.vector_io import ImportResult, import_features, read_queries
from store import Store


def _service(store: Store, model: str | None = None) -> SearchService:
    info = stack.stored_model(store, model)
    return SearchService(
        store, load_index(store, info, progress=True), stack.configured_model, ModelSettings().max_pixels
    )


def run_search(
    image: Path | None,
    image_id: str | None,
    listing_id: str | None,
    opts: ScoreOptions,
    in_stock_only: bool,
    model: str | None = None,
) -> QueryAnswer:
    query = Query(
        image=image.read_bytes() if image else None,
        image_id=parse_uuid(image_id, "--image-id") if image_id else None,
        listing_id=parse_uuid(listing_id, "--listing-id") if listing_id else None,
    )
    return _service(stack.configured_store(), model).search(query, opts, in_stock_only)


def run_vector_search(
    path: Path, opts: ScoreOptions, in_stock_only: bool, model: str | None = None
) -> list[QueryAnswer]:
    """One answer per row of a .npy array of query vectors, ranked as one batch."""
    service = _service(stack.configured_store(), model)
    return service.search_many(read_queries(path, service.index.model.dim), opts, in_stock_only)


def run_import(vectors: Path, ids: Path, model: str | None) -> ImportResult:
    settings = ModelSettings()
    return import_features(stack.configured_store(), vectors, ids, model or settings.name, settings.dtype)


def options(k: int, aggregation: str, min_score: float | None) -> ScoreOptions:
    agg: Aggregation = aggregation  # type: ignore[assignment]  # ScoreOptions checks the value
    return ScoreOptions(k=k, aggregation=agg, min_score=min_score)
