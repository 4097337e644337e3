"""Dependencies: each router asks for what it uses (store, index, query service, ingest
producer, model queue, settings, API keys); nothing reaches through a service object."""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, cast

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from config.settings import ApiSettings, KafkaSettings
from messaging.producer import KafkaProducer
from search.service import SearchService
from search.spark.remote import SparkSearch
from search.tier import SearchIndex
from store import Store
from store.analytics import AnalyticsStore
from store.blobs import BlobStore
from store.outbox import Outbox

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="one of LOOKALIKE_API_KEYS")


class IngestGate:
    """Admits writes until a graceful stop closes it; from then on they get 503 with
    ``Retry-After`` (and readiness says draining). Counts the writes in progress, so the stop
    waits for them before it lets the workers drain the broker."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._closed = False
        self._inside = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        with self._cond:
            if self._closed:
                raise HTTPException(
                    503,
                    "the service is stopping and takes no writes; send it again shortly",
                    {"Retry-After": "5"},
                )
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    def close(self, timeout_s: float) -> int:
        """Refuse writes from now on; wait up to ``timeout_s`` for those in progress.
        Returns how many are still in progress (0: all answered)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closed = True
            while self._inside and time.monotonic() < deadline:
                self._cond.wait(max(0.0, min(0.1, deadline - time.monotonic())))
            return self._inside


@dataclass
class Ingest:
    """What the ingest endpoints publish with: the producer, the topics, the outbox that keeps
    each acknowledged write until a worker stored it, and the gate a graceful stop closes."""

    producer: KafkaProducer
    kafka: KafkaSettings
    outbox: Outbox | None = None  # None: acknowledged writes are not kept (a test's producer only)
    gate: IngestGate = field(default_factory=IngestGate)


@dataclass
class Components:
    """What the routers use, built once (in the lifespan, or by the caller) and shared."""

    service: SearchService  # the query pipeline: image -> vector -> ranked listings -> stored answer
    ingest: Ingest | None = None  # None: no broker, the ingest endpoints answer 503
    blobs: BlobStore | None = None  # where the pixels are kept; None: only file:// URIs are served
    process: str = ""  # which of several serving processes this is ("worker 2 of 3, pid 123")
    spark: SparkSearch | None = None  # LOOKALIKE_SEARCH_ENGINE=spark: who answers searches


def _components(request: Request) -> Components:
    components: Components = request.app.state.components
    return components


def get_service(request: Request) -> SearchService:
    return _components(request).service


def get_store(request: Request) -> Store:
    return _components(request).service.store


def get_index(request: Request) -> SearchIndex:
    return _components(request).service.index


def get_spark(request: Request) -> SparkSearch | None:
    return _components(request).spark


def get_blobs(request: Request) -> BlobStore | None:
    return _components(request).blobs


def get_analytics(request: Request) -> AnalyticsStore:
    store = get_store(request)
    if not hasattr(store, "current_run"):
        raise HTTPException(501, f"the {type(store).__name__} backend keeps no analytics runs")
    return cast(AnalyticsStore, store)


def get_ingest(request: Request) -> Ingest:
    ingest = _components(request).ingest
    if ingest is None:
        raise HTTPException(503, "ingest needs a broker: set LOOKALIKE_KAFKA_BOOTSTRAP")
    return ingest


async def admitted_ingest(request: Request) -> AsyncIterator[Ingest]:
    """The ingest producer for a write, admitted by the gate (503 while a graceful stop drains)
    and counted until the write is answered."""
    ingest = get_ingest(request)
    async with ingest.gate.admit():
        yield ingest


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


Searcher = Annotated[SearchService, Depends(get_service)]
StoreDep = Annotated[Store, Depends(get_store)]
IndexDep = Annotated[SearchIndex, Depends(get_index)]
SparkDep = Annotated[SparkSearch | None, Depends(get_spark)]
BlobsDep = Annotated[BlobStore | None, Depends(get_blobs)]
IngestDep = Annotated[Ingest, Depends(get_ingest)]
WriteDep = Annotated[Ingest, Depends(admitted_ingest)]
AnalyticsDep = Annotated[AnalyticsStore, Depends(get_analytics)]
Settings = Annotated[ApiSettings, Depends(get_settings)]


def _check_key(settings: ApiSettings, given: str | None) -> None:
    if not settings.keys:
        raise HTTPException(403, "this endpoint is disabled: no LOOKALIKE_API_KEYS are configured")
    if given is None:
        raise HTTPException(401, "send an API key in the X-API-Key header", {"WWW-Authenticate": "X-API-Key"})
    if not any(hmac.compare_digest(given, k.get_secret_value()) for k in settings.keys):
        raise HTTPException(403, "the API key is not valid")


def require_key(settings: Settings, key: Annotated[str | None, Security(api_key_header)]) -> None:
    """Writes (ingest) always need a key."""
    _check_key(settings, key)


def read_access(settings: Settings, key: Annotated[str | None, Security(api_key_header)]) -> None:
    """Reads need a key only when ``LOOKALIKE_API_KEYS_FOR_READS`` is set."""
    if settings.keys_for_reads:
        _check_key(settings, key)


class ModelQueue:
    """Bounds the uploads that need the CNN: at most ``concurrency + queue`` in progress (being
    decoded, waiting for a forward pass, embedded or scored); more get 503. The uploads waiting
    are embedded together (``search.service``), ``concurrency`` decoded at once."""

    def __init__(self, concurrency: int, queue: int) -> None:
        self._limit = concurrency + queue
        self._inside = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._inside >= self._limit:
            raise HTTPException(
                503, "too many image searches in progress; retry shortly", {"Retry-After": "1"}
            )
        self._inside += 1
        try:
            yield
        finally:
            self._inside -= 1


def get_model_queue(request: Request) -> ModelQueue:
    queue: ModelQueue = request.app.state.model_queue
    return queue


Queue = Annotated[ModelQueue, Depends(get_model_queue)]
