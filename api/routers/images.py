"""Image content, from where the `images` table says the pixels live."""

from __future__ import annotations

import urllib.parse
import uuid
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from api.deps import Service

router = APIRouter(tags=["images"])


@router.get("/images/{image_id}/content")
def image_content(image_id: uuid.UUID, service: Service) -> FileResponse:
    record = service.store.image_record(image_id)
    if record is None:
        raise HTTPException(404, f"image {image_id} is not in the catalogue")
    parts = urllib.parse.urlsplit(record.uri)
    path = Path(urllib.parse.unquote(parts.path))
    if parts.scheme != "file" or not path.is_file():
        raise HTTPException(404, f"the pixels of image {image_id} are not reachable here ({record.uri})")
    return FileResponse(path, media_type=record.content_type)
