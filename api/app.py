"""The FastAPI app. Store, index and model are built once in the lifespan (or handed in
by the demo, which already holds them) and shared by every request."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from api.deps import ModelQueue
from api.metrics import ApiMetrics
from api.producer import ApiProducer
from api.routers import health, images, ingest, listings, search
from lookalike import stack
from lookalike.settings import ApiSettings, KafkaSettings, ModelSettings
from search.engine import UnknownId, load_index
from search.service import SearchService
from store import StoreUnavailable

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def build_service() -> SearchService:
    store = stack.configured_store()
    settings = ModelSettings()
    info = stack.stored_model(store, settings.name)
    model = stack.configured_model()  # loaded once, before the first request
    return SearchService(store, load_index(store, info, progress=True), lambda: model, settings.max_pixels)


def build_producer() -> ApiProducer | None:
    kafka = KafkaSettings()
    return ApiProducer(kafka) if kafka.bootstrap else None


def create_app(
    service: SearchService | None = None,
    settings: ApiSettings | None = None,
    producer: ApiProducer | None = None,
) -> FastAPI:
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = service or build_service()
        app.state.producer = producer if producer is not None else build_producer()
        yield
        if app.state.producer is not None:
            app.state.producer.close()

    app = FastAPI(
        title="Lookalike",
        version="0.1.0",
        lifespan=lifespan,
        description="Find listings that look like a photo.",
    )
    app.state.settings = settings
    app.state.model_queue = ModelQueue(settings.model_concurrency, settings.model_queue)
    app.state.metrics = ApiMetrics()
    app.middleware("http")(app.state.metrics.middleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Content-Type"],
        )
    app.include_router(health.router)
    for router in (search.router, listings.router, images.router, ingest.router):
        app.include_router(router, prefix="/v1")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.exception_handler(UnknownId)
    async def unknown_id(_: Request, exc: UnknownId) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(StoreUnavailable)
    async def store_down(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": f"store unavailable: {exc}"}, status_code=503, headers={"Retry-After": "5"}
        )

    return app
