"""``lookalike search`` and ``lookalike features import``: queries and imports against the
stored catalogue, through the engine."""

from __future__ import annotations

import uuid
from contextlib import closing
from pathlib import Path

from config.settings import Settings
from lookalike import stack
from schemas.records import QueryAnswer
from search.scoring import ScoreOptions
from search.service import Query
from search.vector_io import ImportResult, import_features, read_queries


def run_search(
    settings: Settings, query: Query, opts: ScoreOptions, in_stock_only: bool, model: str | None = None
) -> QueryAnswer:
    store = stack.configured_store(settings)
    if settings.search.engine == "spark":
        spark = stack.spark_search(settings, store, model)
        with closing(spark.client):
            return spark.search(query, opts, in_stock_only)
    return stack.search_service(settings, store, model, progress=True).search(query, opts, in_stock_only)


def run_vector_search(
    settings: Settings, path: Path, opts: ScoreOptions, in_stock_only: bool, model: str | None = None
) -> list[QueryAnswer]:
    """One answer per row of a .npy array of query vectors, ranked as one batch."""
    store = stack.configured_store(settings)
    if settings.search.engine == "spark":
        spark = stack.spark_search(settings, store, model)
        with closing(spark.client):
            return spark.search_many(read_queries(path, spark.service.index.model.dim), opts, in_stock_only)
    service = stack.search_service(settings, store, model, progress=True)
    return service.search_many(read_queries(path, service.index.model.dim), opts, in_stock_only)


def run_import(settings: Settings, vectors: Path, ids: Path, model: str | None) -> ImportResult:
    store = stack.configured_store(settings)
    return import_features(store, vectors, ids, model or stack.model_name(settings), settings.model.dtype)


def image_query(image: Path | None, image_id: uuid.UUID | None, listing_id: uuid.UUID | None) -> Query:
    return Query(image=image.read_bytes() if image else None, image_id=image_id, listing_id=listing_id)
