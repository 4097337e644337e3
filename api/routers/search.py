"""``POST /v1/search`` (JSON: image_id, listing_id or vector), ``POST /v1/search/image`` (a
multipart photo upload) and ``GET /v1/search/{query_id}`` (the stored answer, one slice of
query_results). Both bodies are declared, so OpenAPI documents them from the models."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import Future
from typing import Annotated

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Queue, Searcher, Settings, StoreDep, read_access
from api.routers.models import require_served
from extract.decode import DecodeError
from schemas.answers import Answer
from schemas.records import QueryAnswer
from search.scoring import MAX_K, Aggregation, ScoreOptions
from search.service import Overloaded, SearchService
from search.service import Query as SearchQuery
from store.results import answer_from_rows

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
    model: str | None = Field(default=None, max_length=100, description="the served model (GET /v1/models)")

    def score_options(self) -> ScoreOptions:
        return ScoreOptions(
            k=self.k,
            aggregation=self.aggregation,
            top_n=self.top_n,
            threshold=self.threshold,
            min_score=self.min_score,
        )


_OPTIONS = set(SearchOptions.model_fields)


class ImageSearchForm(SearchOptions):
    """A photo upload with the search options as further form fields."""

    image: UploadFile = Field(description="the photo; its type is read from its content")


class SearchJson(SearchOptions):
    image_id: uuid.UUID | None = None
    listing_id: uuid.UUID | None = None
    vector: list[float] | None = Field(default=None, min_length=1, max_length=MAX_DIM)


def _within_upload_limit(request: Request, settings: Settings) -> None:
    """Refuse an oversized upload before its body is read."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > settings.max_upload_bytes + 64 * 1024:
        raise HTTPException(413, f"the request is over the upload limit of {settings.max_upload_bytes} bytes")


async def _answer(
    searcher: SearchService, query: SearchQuery, opts: SearchOptions, limit: int | None
) -> QueryAnswer:
    """The answer from the service's next pass (shared with whatever else waits); past
    ``limit`` searches waiting, 503 with ``Retry-After``."""
    try:
        # checking the model and resolving an id may read the store: in the threadpool (one
        # hop); then the answer is awaited without holding a thread
        future = await run_in_threadpool(_submit, searcher, query, opts, limit)
        answer: QueryAnswer = await asyncio.wrap_future(future)
    except Overloaded as exc:
        raise HTTPException(503, str(exc), {"Retry-After": "1"}) from None
    except DecodeError as exc:
        raise HTTPException(422, f"the upload is not a usable image: {exc}") from None
    except ValueError as exc:  # e.g. a vector of the wrong dimension
        raise HTTPException(422, str(exc)) from None
    return answer


def _submit(
    searcher: SearchService, query: SearchQuery, opts: SearchOptions, limit: int | None
) -> Future[QueryAnswer]:
    require_served(searcher.store, searcher.index.model.name, opts.model)
    return searcher.submit(query, opts.score_options(), opts.in_stock_only, limit)


@router.post("/search", response_model=Answer)
async def search(body: SearchJson, searcher: Searcher, settings: Settings) -> QueryAnswer:
    """Listings that look like an indexed image, a listing (its images combined) or a raw
    vector, best first, with stock and the matched images. To search with a photo, post it to
    ``/v1/search/image``. Concurrent searches are scored together; past
    ``LOOKALIKE_API_SEARCH_QUEUE`` waiting, 503 with ``Retry-After``."""
    try:
        vector = None if body.vector is None else _finite_vector(body.vector)
        query = SearchQuery(image_id=body.image_id, listing_id=body.listing_id, vector=vector)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    options = SearchOptions.model_validate(body.model_dump(include=_OPTIONS))
    return await _answer(searcher, query, options, settings.search_queue)


@router.post("/search/image", response_model=Answer, dependencies=[Depends(_within_upload_limit)])
async def search_image(
    form: Annotated[ImageSearchForm, Form(media_type="multipart/form-data")],
    searcher: Searcher,
    queue: Queue,
    settings: Settings,
) -> QueryAnswer:
    """Listings that look like an uploaded photo, best first (the CNN embeds the uploads
    waiting in one forward pass; past ``LOOKALIKE_API_MODEL_CONCURRENCY`` +
    ``LOOKALIKE_API_MODEL_QUEUE`` uploads in progress, 503 with ``Retry-After``)."""
    data = await form.image.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"the image is over the upload limit of {settings.max_upload_bytes} bytes")
    if not data:
        raise HTTPException(422, "the uploaded image is empty")
    async with queue.slot():
        options = SearchOptions.model_validate(form.model_dump(include=_OPTIONS))
        return await _answer(searcher, SearchQuery(image=data), options, None)


def _finite_vector(values: list[float]) -> npt.NDArray[np.float32]:
    with np.errstate(over="ignore"):
        vector = np.asarray(values, dtype=np.float32)
    if not np.all(np.isfinite(vector)):
        raise ValueError("vector values must be finite and fit in float32")
    return vector


@router.get("/search/{query_id}", response_model=Answer)
async def read_back(
    query_id: uuid.UUID, store: StoreDep, k: Annotated[int | None, Query(ge=1, le=MAX_K)] = None
) -> QueryAnswer:
    """A stored answer, best first (expires after the results' TTL)."""
    rows = await run_in_threadpool(store.read_query_results, query_id, k)
    if not rows:
        raise HTTPException(404, f"no stored results for query {query_id} (unknown or expired)")
    return answer_from_rows(query_id, rows)
