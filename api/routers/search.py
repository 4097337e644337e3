"""``POST /v1/search`` (JSON: image_id, listing_id or vector), ``POST /v1/search/image`` (a
multipart photo upload) and ``GET /v1/search/{query_id}`` (the stored answer, one slice of
query_results). Both bodies are declared, so OpenAPI documents them from the models.

With ``LOOKALIKE_SEARCH_ENGINE=spark`` a query is resolved to its vector here (the CNN embeds an
upload) and answered by the Spark search service; past ``LOOKALIKE_SEARCH_SPARK_TIMEOUT_S`` the
answer is 202 with the query id and a ``Location`` to read it from later."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.bodies import INSTEAD
from api.deps import Queue, Searcher, Settings, SparkDep, StoreDep, read_access
from api.routers.models import require_served
from extract.decode import DecodeError
from messaging.errors import BrokerUnavailable
from schemas.answers import Answer
from schemas.records import QueryAnswer
from search.scoring import MAX_K, Aggregation, ScoreOptions
from search.service import Overloaded, SearchService
from search.service import Query as SearchQuery
from search.spark.client import wait_async
from search.spark.messages import AnswerNotice, SearchMessage
from search.spark.remote import SparkSearch
from store.results import answer_from_rows

router = APIRouter(tags=["search"], dependencies=[Depends(read_access)])
PENDING: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "engine `spark`: not answered within the wait; read it later from the "
        "`Location` (`GET /v1/search/{query_id}`)",
        "content": {"application/json": {"example": {"query_id": "…", "status": "pending"}}},
    }
}
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


@contextmanager
def _query_errors() -> Iterator[None]:
    """A query that cannot be answered as sent: 422 with the reason."""
    try:
        yield
    except DecodeError as exc:
        raise HTTPException(422, f"the upload is not a usable image: {exc}") from None
    except ValueError as exc:  # e.g. a vector of the wrong dimension
        raise HTTPException(422, str(exc)) from None


async def _answer(
    searcher: SearchService, query: SearchQuery, opts: SearchOptions, limit: int | None
) -> QueryAnswer:
    """The answer from the service's next pass (shared with whatever else waits); past
    ``limit`` searches waiting, 503 with ``Retry-After``."""
    with _query_errors():
        try:
            # checking the model and resolving an id may read the store: in the threadpool (one
            # hop); then the answer is awaited without holding a thread
            future = await run_in_threadpool(_submit, searcher, query, opts, limit)
            answer: QueryAnswer = await asyncio.wrap_future(future)
        except Overloaded as exc:
            raise HTTPException(503, str(exc), {"Retry-After": "1"}) from None
    return answer


def _submit(
    searcher: SearchService, query: SearchQuery, opts: SearchOptions, limit: int | None
) -> Future[QueryAnswer]:
    require_served(searcher.store, searcher.index.model.name, opts.model)
    return searcher.submit(query, opts.score_options(), opts.in_stock_only, limit)


async def _spark_message(spark: SparkSearch, query: SearchQuery, opts: SearchOptions) -> SearchMessage:
    """The query resolved to its vector, as the in-memory path resolves it."""
    await run_in_threadpool(require_served, spark.service.store, spark.model, opts.model)
    with _query_errors():
        return await run_in_threadpool(spark.message, query, opts.score_options(), opts.in_stock_only)


async def _ask_spark(spark: SparkSearch, message: SearchMessage) -> QueryAnswer | JSONResponse:
    """Send the query and wait for its answer; 202 with its id past the timeout."""
    try:
        future = await run_in_threadpool(spark.send, message)
    except BrokerUnavailable as exc:
        raise HTTPException(503, f"the search service cannot be asked: {exc}", {"Retry-After": "5"}) from None
    notice = await wait_async(future, spark.timeout_s)
    if notice is None:
        return JSONResponse(
            {"query_id": str(message.query_id), "status": "pending"},
            status_code=202,
            headers={"Location": f"/v1/search/{message.query_id}", "Retry-After": "1"},
        )
    with _query_errors():
        return await run_in_threadpool(spark.answer, notice)


@router.post(
    "/search",
    response_model=Answer,
    responses=PENDING,
    openapi_extra={
        INSTEAD: "to search with a photo, post it as multipart/form-data (field image) to /v1/search/image"
    },
)
async def search(
    body: SearchJson, searcher: Searcher, spark: SparkDep, settings: Settings
) -> QueryAnswer | JSONResponse:
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
    if spark is None:
        return await _answer(searcher, query, options, settings.search_queue)
    return await _ask_spark(spark, await _spark_message(spark, query, options))


@router.post(
    "/search/image",
    response_model=Answer,
    responses=PENDING,
    dependencies=[Depends(_within_upload_limit)],
    openapi_extra={INSTEAD: "to search by image_id, listing_id or vector, post JSON to /v1/search"},
)
async def search_image(
    form: Annotated[ImageSearchForm, Form(media_type="multipart/form-data")],
    searcher: Searcher,
    spark: SparkDep,
    queue: Queue,
    settings: Settings,
) -> QueryAnswer | JSONResponse:
    """Listings that look like an uploaded photo, best first (the CNN embeds the uploads
    waiting in one forward pass; past ``LOOKALIKE_API_MODEL_CONCURRENCY`` +
    ``LOOKALIKE_API_MODEL_QUEUE`` uploads in progress, 503 with ``Retry-After``)."""
    data = await form.image.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"the image is over the upload limit of {settings.max_upload_bytes} bytes")
    if not data:
        raise HTTPException(422, "the uploaded image is empty")
    options = SearchOptions.model_validate(form.model_dump(include=_OPTIONS))
    async with queue.slot():  # only the CNN's work holds a slot, not the wait for Spark
        if spark is None:
            return await _answer(searcher, SearchQuery(image=data), options, None)
        message = await _spark_message(spark, SearchQuery(image=data), options)
    return await _ask_spark(spark, message)


def _finite_vector(values: list[float]) -> npt.NDArray[np.float32]:
    with np.errstate(over="ignore"):
        vector = np.asarray(values, dtype=np.float32)
    if not np.all(np.isfinite(vector)):
        raise ValueError("vector values must be finite and fit in float32")
    return vector


@router.get("/search/{query_id}", response_model=Answer)
async def read_back(
    query_id: uuid.UUID,
    store: StoreDep,
    spark: SparkDep,
    k: Annotated[int | None, Query(ge=1, le=MAX_K)] = None,
) -> QueryAnswer:
    """A stored answer, best first (expires after the results' TTL). Engine `spark`: 404 that
    says `pending` while the service has not answered a query this API sent, 422 when it
    could not answer it."""
    rows = await run_in_threadpool(store.read_query_results, query_id, k)
    if rows:
        return answer_from_rows(query_id, rows)
    state = spark.client.state(query_id) if spark is not None else None
    if state == "pending":
        raise HTTPException(
            404,
            f"query {query_id} is pending: the search service has not answered it yet; ask again shortly",
            {"Retry-After": "1"},
        )
    if isinstance(state, AnswerNotice):
        if state.error is not None:
            raise HTTPException(422, state.error)
        if state.results == 0:
            return QueryAnswer(query_id, ())
    raise HTTPException(404, f"no stored results for query {query_id} (unknown or expired)")
