"""Image content and thumbnails, from where the `images` table says the pixels live: the blob
store (every image extracted since pixels are kept: uploads, file and http references), or a
local file (rows written before). Pixels that are gone are a 404 that says so."""

from __future__ import annotations

import io
import threading
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from PIL import Image, UnidentifiedImageError

from api.deps import BlobsDep, StoreDep, read_access
from schemas.records import ImageRecord
from store import Store
from store.blobs import BlobMissing, BlobStore

router = APIRouter(tags=["images"], dependencies=[Depends(read_access)])
CACHE = "public, max-age=86400"
IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}},
    404: {"description": "unknown image, or pixels gone"},
}


def _record(store: Store, image_id: uuid.UUID) -> ImageRecord:
    record = store.image_record(image_id)
    if record is None:
        raise HTTPException(404, f"image {image_id} is not in the catalogue")
    return record


def _pixels(blobs: BlobStore | None, record: ImageRecord) -> bytes:
    """The original bytes: through the blob store when the URI is its, else a local file."""
    uri = record.uri
    if blobs is not None and blobs.owns(uri):
        try:
            return blobs.get(uri)  # BlobUnavailable is a StoreUnavailable: 503
        except BlobMissing:
            raise HTTPException(404, f"the pixels of image {record.image_id} are gone ({uri})") from None
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "file":
        try:
            with open(urllib.parse.unquote(parts.path), "rb") as fh:
                return fh.read()
        except OSError:
            raise HTTPException(404, f"the pixels of image {record.image_id} are gone ({uri})") from None
    raise HTTPException(
        404, f"the pixels of image {record.image_id} are not kept where this API reads ({uri})"
    )


def _content(store: Store, blobs: BlobStore | None, image_id: uuid.UUID) -> tuple[bytes, str]:
    record = _record(store, image_id)
    return _pixels(blobs, record), record.content_type


def _thumbnail_of(store: Store, blobs: BlobStore | None, image_id: uuid.UUID, size: int) -> bytes:
    record = _record(store, image_id)
    # keyed by the row's version: a re-ingested image (new ingested_at) gets a new thumbnail
    key = (record.uri, record.size_bytes, record.ingested_at.isoformat(), size)
    return _thumbnails.get(key, lambda: _pixels(blobs, record))


@router.get("/images/{image_id}/content", responses=IMAGE_RESPONSE)
async def image_content(image_id: uuid.UUID, store: StoreDep, blobs: BlobsDep) -> Response:
    """The original bytes, as uploaded or fetched, with their content type."""
    data, content_type = await run_in_threadpool(_content, store, blobs, image_id)
    return Response(data, media_type=content_type, headers={"Cache-Control": CACHE})


@router.get("/images/{image_id}/thumbnail", responses=IMAGE_RESPONSE)
async def image_thumbnail(
    image_id: uuid.UUID,
    store: StoreDep,
    blobs: BlobsDep,
    size: Annotated[int, Query(ge=16, le=1024)] = 256,
) -> Response:
    """A JPEG at most ``size`` pixels on its longer side."""
    data = await run_in_threadpool(_thumbnail_of, store, blobs, image_id, size)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": CACHE})


class _ThumbnailCache:
    """The last ``items`` thumbnails made, by (uri, size_bytes, ingested_at, size)."""

    def __init__(self, items: int = 1024) -> None:
        self._items, self._data = items, OrderedDict[tuple[str, int, str, int], bytes]()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, str, int], read: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        data = _scaled(read(), key[-1])
        with self._lock:
            self._data[key] = data
            while len(self._data) > self._items:
                self._data.popitem(last=False)
        return data


_thumbnails = _ThumbnailCache()


def _scaled(data: bytes, size: int) -> bytes:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail((size, size))
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=85)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise HTTPException(422, f"the kept pixels are not a decodable image: {exc}") from None
    return out.getvalue()
