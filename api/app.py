"""The FastAPI app. Store, index and model are built once in the lifespan (or handed in
by the demo, which already holds them) and shared by every request."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from api.routers import health, images, search
from lookalike import stack
from lookalike.settings import ApiSettings, ModelSettings
from search.engine import UnknownId, load_index
from search.service import SearchService
from store import StoreUnavailable

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def build_service() -> SearchService:
    store = stack.configured_store()
    name = ModelSettings().name
    info = store.get_model(name)
    if info is None:
        raise RuntimeError(f"the store holds no vectors of model {name}: run `lookalike extract` first")
    model = stack.configured_model()  # loaded once, before the first request
    return SearchService(store, load_index(store, info, progress=True), lambda: model)


def create_app(service: SearchService | None = None, settings: ApiSettings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = service or build_service()
        app.state.settings = settings or ApiSettings()
        yield

    app = FastAPI(
        title="Lookalike",
        version="0.1.0",
        lifespan=lifespan,
        description="Find listings that look like a photo.",
    )
    app.include_router(health.router)
    app.include_router(search.router, prefix="/v1")
    app.include_router(images.router, prefix="/v1")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.exception_handler(UnknownId)
    async def unknown_id(_: Request, exc: UnknownId) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(StoreUnavailable)
    async def store_down(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"store unavailable: {exc}"}, status_code=503)

    return app
