"""Dependencies shared by the routers: the service, settings, API keys, the model queue."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from lookalike.settings import ApiSettings
from search.service import SearchService

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="one of LOOKALIKE_API_KEYS")


def get_service(request: Request) -> SearchService:
    service: SearchService = request.app.state.service
    return service


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


Service = Annotated[SearchService, Depends(get_service)]
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
    """Bounds the uploads that need the CNN: ``concurrency`` run, ``queue`` wait, more get 503."""

    def __init__(self, concurrency: int, queue: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
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
            async with self._slots:
                yield
        finally:
            self._inside -= 1


def get_model_queue(request: Request) -> ModelQueue:
    queue: ModelQueue = request.app.state.model_queue
    return queue


Queue = Annotated[ModelQueue, Depends(get_model_queue)]
