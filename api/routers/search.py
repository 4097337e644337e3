"""``POST /v1/search`` (multipart upload, or JSON with image_id / listing_id) and
``GET /v1/search/{query_id}`` (the stored answer, one slice of query_results)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from api.deps import Service
from extract.decode import DecodeError
from search.scoring import MAX_K, Aggregation, ScoreOptions
from search.service import Query, answer_from_rows

router = APIRouter(tags=["search"])


class SearchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(default=10, ge=1, le=MAX_K)
    aggregation: Aggregation = "max"
    in_stock_only: bool = False


class SearchById(SearchOptions):
    image_id: uuid.UUID | None = None
    listing_id: uuid.UUID | None = None


class ImageMatchOut(BaseModel):
    image_id: uuid.UUID
    score: float


class ListingOut(BaseModel):
    listing_id: uuid.UUID
    listing_name: str
    score: float
    inventory: int | None
    images: list[ImageMatchOut]


class AnswerOut(BaseModel):
    query_id: uuid.UUID
    results: list[ListingOut]


_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
                        "aggregation": {
                            "type": "string",
                            "enum": ["max", "mean_top_n", "count_above"],
                        },
                        "in_stock_only": {"type": "boolean"},
                    },
                }
            },
            "application/json": {"schema": SearchById.model_json_schema()},
        },
    }
}


async def _parse(request: Request) -> tuple[Query, SearchOptions]:
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_part_size=request.app.state.settings.max_upload_bytes)
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise HTTPException(422, "multipart search needs a file field named 'image'")
            data = await upload.read()
            if not data:
                raise HTTPException(422, "the uploaded image is empty")
            fields = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
            return Query(image=data), SearchOptions.model_validate(fields)
        if ctype.startswith("application/json"):
            body = SearchById.model_validate_json(await request.body())
            query = Query(image_id=body.image_id, listing_id=body.listing_id)
            return query, SearchOptions(
                k=body.k, aggregation=body.aggregation, in_stock_only=body.in_stock_only
            )
    except ValidationError as exc:
        raise HTTPException(422, json.loads(exc.json(include_url=False))) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    raise HTTPException(
        415, "send multipart/form-data with an 'image' file, or JSON with image_id or listing_id"
    )


@router.post("/search", response_model=AnswerOut, openapi_extra=_REQUEST_BODY)
async def search(request: Request, service: Service) -> dict[str, object]:
    """Listings that look like the query, best first, with stock and the matched images."""
    query, opts = await _parse(request)
    score = ScoreOptions(k=opts.k, aggregation=opts.aggregation)
    try:
        answer = await run_in_threadpool(service.search, query, score, opts.in_stock_only)
    except DecodeError as exc:
        raise HTTPException(422, f"the upload is not a usable image: {exc}") from None
    return answer.as_json()


@router.get("/search/{query_id}", response_model=AnswerOut)
def read_back(query_id: uuid.UUID, service: Service, k: int | None = None) -> dict[str, object]:
    """A stored answer, best first (expires after the results' TTL)."""
    rows = service.store.read_query_results(query_id, k)
    if not rows:
        raise HTTPException(404, f"no stored results for query {query_id} (unknown or expired)")
    return answer_from_rows(query_id, rows).as_json()
