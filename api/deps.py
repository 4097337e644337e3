"""Dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from search.service import SearchService


def get_service(request: Request) -> SearchService:
    service: SearchService = request.app.state.service
    return service


Service = Annotated[SearchService, Depends(get_service)]
