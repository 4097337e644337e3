"""Image content and thumbnails, from where the `images` table says the pixels live."""

from __future__ import annotations

import functools
import io
import urllib.parse
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from PIL import Image

from api.deps import Service, read_access
from search.service import SearchService

router = APIRouter(tags=["images"], dependencies=[Depends(read_access)])
CACHE = "public, max-age=86400"


def _local_file(service: SearchService, image_id: uuid.UUID) -> tuple[Path, str]:
    record = service.store.image_record(image_id)
    if record is None:
        raise HTTPException(404, f"image {image_id} is not in the catalogue")
    parts = urllib.parse.urlsplit(record.uri)
    path = Path(urllib.parse.unquote(parts.path))
    if parts.scheme != "file" or not path.is_file():
        raise HTTPException(404, f"the pixels of image {image_id} are not reachable here ({record.uri})")
    return path, record.content_type


@router.get("/images/{image_id}/content")
async def image_content(image_id: uuid.UUID, service: Service) -> FileResponse:
    path, content_type = await run_in_threadpool(_local_file, service, image_id)
    return FileResponse(path, media_type=content_type, headers={"Cache-Control": CACHE})


@router.get("/images/{image_id}/thumbnail", responses={200: {"content": {"image/jpeg": {}}}})
async def image_thumbnail(
    image_id: uuid.UUID, service: Service, size: Annotated[int, Query(ge=16, le=1024)] = 256
) -> Response:
    """A JPEG at most ``size`` pixels on its longer side."""
    path, _ = await run_in_threadpool(_local_file, service, image_id)
    data = await run_in_threadpool(_thumbnail, str(path), path.stat().st_mtime_ns, size)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": CACHE})


@functools.lru_cache(maxsize=1024)
def _thumbnail(path: str, mtime_ns: int, size: int) -> bytes:
    with Image.open(path) as image:
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=85)
    return out.getvalue()
