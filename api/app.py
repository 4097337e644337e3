"""The FastAPI app factory. What the routers use (:class:`api.deps.Components`) is built once,
by the caller or in the lifespan, and shared by every request; the wiring that builds it from
settings lives on the roof (``lookalike/stack.py``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from api import bodies
from api.deps import Components, ModelQueue
from api.metrics import ApiMetrics, MetricsMiddleware
from api.routers import analytics, health, images, ingest, listings, models, search
from config.settings import ApiSettings
from search.engine import UnknownId
from search.store_lookup import NoIndexHere
from store import StoreUnavailable

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(settings: ApiSettings, components: Components | Callable[[], Components]) -> FastAPI:
    """The app over ``components``: given (the demo and tests hold them already), or built by
    the callable in the lifespan, so a server starts listening before the index is loaded."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.components = components if isinstance(components, Components) else components()
        app.state.components.service.observe(app.state.metrics)  # batch sizes, waits, pass times
        yield
        if app.state.components.ingest is not None:
            app.state.components.ingest.producer.close()
        if app.state.components.spark is not None:
            app.state.components.spark.client.close()

    app = FastAPI(
        title="Lookalike",
        version="0.1.0",
        lifespan=lifespan,
        description="Find listings that look like a photo.",
        dependencies=[Depends(bodies.body_type)],  # a body of a type the endpoint does not read: 415
    )
    bodies.install(app)
    app.state.settings = settings
    app.state.model_queue = ModelQueue(settings.model_concurrency, settings.model_queue)
    app.state.metrics = ApiMetrics()
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Content-Type"],
        )
    app.include_router(health.router)
    app.include_router(models.router, prefix="/v1")
    for router in (search.router, listings.router, images.router, ingest.router, analytics.router):
        app.include_router(router, prefix="/v1")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.exception_handler(UnknownId)
    async def unknown_id(_: Request, exc: UnknownId) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(NoIndexHere)
    async def no_index(_: Request, exc: NoIndexHere) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=501)

    @app.exception_handler(StoreUnavailable)
    async def store_down(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": f"store unavailable: {exc}"}, status_code=503, headers={"Retry-After": "5"}
        )

    return app
