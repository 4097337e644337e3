"""``POST /v1/search`` (multipart upload, or JSON with image_id / listing_id / vector) and
``GET /v1/search/{query_id}`` (the stored answer, one slice of query_results)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from api.deps import ModelQueue, Queue, Service, read_access
from extract.decode import DecodeError
from search.scoring import MAX_K, Aggregation, ScoreOptions
from search.service import Query as SearchQuery
from search.service import answer_from_rows

router = APIRouter(tags=["search"], dependencies=[Depends(read_access)])
MAX_DIM = 65_536


class SearchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(default=10, ge=1, le=MAX_K)
    aggregation: Aggregation = "max"
    top_n: int = Field(default=3, ge=1, le=100, description="images averaged by mean_top_n")
    threshold: float = Field(default=0.8, ge=-1, le=1, description="score counted by count_above")
    min_score: float | None = Field(default=None, ge=-1, le=1000)
    in_stock_only: bool = False

    def score_options(self) -> ScoreOptions:
        return ScoreOptions(
            k=self.k,
            aggregation=self.aggregation,
            top_n=self.top_n,
            threshold=self.threshold,
            min_score=self.min_score,
        )


class SearchJson(SearchOptions):
    image_id: uuid.UUID | None = None
    listing_id: uuid.UUID | None = None
    vector: list[float] | None = Field(default=None, min_length=1, max_length=MAX_DIM)


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


_OPTIONS_SCHEMA = SearchOptions.model_json_schema()
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
                        **_OPTIONS_SCHEMA["properties"],
                    },
                }
            },
            "application/json": {"schema": SearchJson.model_json_schema()},
        },
    }
}


async def _parse(request: Request, max_bytes: int) -> tuple[SearchQuery, SearchOptions]:
    ctype = request.headers.get("content-type", "")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes + 64 * 1024:
        raise HTTPException(413, f"the request is over the upload limit of {max_bytes} bytes")
    try:
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_part_size=max_bytes)
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise HTTPException(422, "multipart search needs a file field named 'image'")
            data = await upload.read()
            if not data:
                raise HTTPException(422, "the uploaded image is empty")
            fields = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
            return SearchQuery(image=data), SearchOptions.model_validate(fields)
        if ctype.startswith("application/json"):
            body = SearchJson.model_validate_json(await request.body())
            vector = None if body.vector is None else _finite_vector(body.vector)
            query = SearchQuery(image_id=body.image_id, listing_id=body.listing_id, vector=vector)
            return query, SearchOptions.model_validate(
                body.model_dump(include=set(SearchOptions.model_fields))
            )
    except ValidationError as exc:
        raise HTTPException(422, json.loads(exc.json(include_url=False, include_input=False))) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    raise HTTPException(
        415, "send multipart/form-data with an 'image' file, or JSON with image_id, listing_id or vector"
    )


def _finite_vector(values: list[float]) -> npt.NDArray[np.float32]:
    with np.errstate(over="ignore"):
        vector = np.asarray(values, dtype=np.float32)
    if not np.all(np.isfinite(vector)):
        raise ValueError("vector values must be finite and fit in float32")
    return vector


@contextlib.asynccontextmanager
async def _model_slot(query: SearchQuery, queue: ModelQueue) -> AsyncIterator[None]:
    """Only searches that run the CNN wait for it."""
    if query.image is None:
        yield
        return
    async with queue.slot():
        yield


@router.post("/search", response_model=AnswerOut, openapi_extra=_REQUEST_BODY)
async def search(request: Request, service: Service, queue: Queue) -> dict[str, object]:
    """Listings that look like the query, best first, with stock and the matched images."""
    query, opts = await _parse(request, request.app.state.settings.max_upload_bytes)
    try:
        async with _model_slot(query, queue):
            answer = await run_in_threadpool(service.search, query, opts.score_options(), opts.in_stock_only)
    except DecodeError as exc:
        raise HTTPException(422, f"the upload is not a usable image: {exc}") from None
    except ValueError as exc:  # e.g. a vector of the wrong dimension
        raise HTTPException(422, str(exc)) from None
    return answer.as_json()


@router.get("/search/{query_id}", response_model=AnswerOut)
async def read_back(
    query_id: uuid.UUID, service: Service, k: Annotated[int | None, Query(ge=1, le=MAX_K)] = None
) -> dict[str, object]:
    """A stored answer, best first (expires after the results' TTL)."""
    rows = await run_in_threadpool(service.store.read_query_results, query_id, k)
    if not rows:
        raise HTTPException(404, f"no stored results for query {query_id} (unknown or expired)")
    return answer_from_rows(query_id, rows).as_json()
