"""``lookalike search``: one query against the stored catalogue, through the engine."""

from __future__ import annotations

from pathlib import Path

from lookalike import stack
from lookalike.settings import ModelSettings
from schemas.ids import parse_uuid
from schemas.records import QueryAnswer
from search.engine import load_index
from search.scoring import ScoreOptions
from search.service import Query, SearchService


def run_search(
    image: Path | None,
    image_id: str | None,
    listing_id: str | None,
    k: int,
    aggregation: str,
    in_stock_only: bool,
) -> QueryAnswer:
    query = Query(
        image=image.read_bytes() if image else None,
        image_id=parse_uuid(image_id, "--image-id") if image_id else None,
        listing_id=parse_uuid(listing_id, "--listing-id") if listing_id else None,
    )
    store = stack.configured_store()
    name = ModelSettings().name
    info = store.get_model(name)
    if info is None:
        raise RuntimeError(f"the store holds no vectors of model {name}: run `lookalike extract` first")
    service = SearchService(store, load_index(store, info), lambda: stack.configured_model())
    return service.search(query, ScoreOptions(k=k, aggregation=aggregation), in_stock_only)  # type: ignore[arg-type]
