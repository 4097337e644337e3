"""Ingest over HTTP (API key required): an image upload into Kafka, a stock update, and the
removal of an image or a listing.

A 202 means kept: each write is kept in the ingest outbox (``store/outbox.py``) before it is
produced, and answered 202 once the broker acknowledged it; a refused write (4xx, 503) leaves
nothing behind. While a graceful stop drains the stack, writes get 503 with ``Retry-After``
(``WriteDep``)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.deps import IndexDep, Ingest, Searcher, Settings, StoreDep, WriteDep, require_key
from extract.decode import DecodeError, probe
from ingest.remove import UnknownTarget, removal
from messaging.errors import BrokerUnavailable
from schemas import ids
from schemas.messages import Headers, ImageMessage, stock_value
from schemas.records import StockLevel
from search.tier import SearchIndex
from store import Store

router = APIRouter(tags=["ingest"], dependencies=[Depends(require_key)])


class Accepted(BaseModel):
    listing_id: uuid.UUID
    image_id: uuid.UUID | None = None
    topic: str


class StockUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listing_id: uuid.UUID | None = None
    listing: str | None = Field(default=None, min_length=1, max_length=500, description="external name")
    inventory: int = Field(ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _one_listing(self) -> StockUpdate:
        if (self.listing_id is None) == (self.listing is None):
            raise ValueError("give exactly one of listing_id or listing (the external name)")
        return self


@router.post("/images", status_code=202, response_model=Accepted)
async def upload_image(
    ingest: WriteDep,
    settings: Settings,
    searcher: Searcher,
    image: Annotated[UploadFile, File(description="the photo; its type is read from its content")],
    listing: Annotated[str, Form(min_length=1, max_length=500, description="the listing's external name")],
) -> Accepted:
    """Queue a photo for extraction. The same bytes for the same listing get the same id."""
    limit = min(settings.max_upload_bytes, ingest.kafka.max_message_bytes)
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"the image is over the limit of {limit} bytes")
    fmt = await run_in_threadpool(_image_format, data, searcher.max_pixels)
    lid = ids.listing_id(listing)
    iid = ids.image_id(listing, hashlib.sha256(data).hexdigest())
    message = ImageMessage(lid, iid, listing, Image.MIME.get(fmt, "application/octet-stream"), "upload", data)
    await _send(ingest, ingest.kafka.images_topic, message.key(), data, message.headers())
    return Accepted(listing_id=lid, image_id=iid, topic=ingest.kafka.images_topic)


@router.post("/stock", status_code=202, response_model=Accepted)
async def update_stock(update: StockUpdate, ingest: WriteDep) -> Accepted:
    """Queue a stock level; the stock follower applies it to the store."""
    lid = update.listing_id or ids.listing_id(update.listing or "")
    level = StockLevel(lid, update.inventory, uuid.uuid4())
    await _send(ingest, ingest.kafka.stock_topic, str(lid).encode(), stock_value(level), [])
    return Accepted(listing_id=lid, topic=ingest.kafka.stock_topic)


@router.delete("/images/{image_id}", status_code=202, response_model=Accepted)
async def remove_image(image_id: uuid.UUID, ingest: WriteDep, store: StoreDep, index: IndexDep) -> Accepted:
    """Remove an image: gone from this replica's results at once, from the store (and the
    other replicas) once the workers reach the removal, after the listing's earlier uploads."""
    return await _remove(ingest, store, index, None, image_id)


@router.delete("/listings/{listing_id}", status_code=202, response_model=Accepted)
async def remove_listing(
    listing_id: uuid.UUID, ingest: WriteDep, store: StoreDep, index: IndexDep
) -> Accepted:
    """Remove a listing with its images, vectors and stock, as an image removal does."""
    return await _remove(ingest, store, index, listing_id, None)


async def _remove(
    ingest: Ingest,
    store: Store,
    index: SearchIndex,
    listing_id: uuid.UUID | None,
    image_id: uuid.UUID | None,
) -> Accepted:
    try:
        message = await run_in_threadpool(removal, store, listing_id, image_id)
    except UnknownTarget as exc:
        raise HTTPException(404, str(exc)) from None
    topic = ingest.kafka.images_topic
    await _send(ingest, topic, message.key(), b"", message.headers())
    if message.image_id is None:  # gone from this replica's answers at once
        index.remove_listing(message.listing_id)
    else:
        index.remove_images([message.image_id])
    return Accepted(listing_id=message.listing_id, image_id=message.image_id, topic=topic)


async def _send(ingest: Ingest, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
    """Keep the write in the outbox, then produce it and wait for the broker's acknowledgement;
    anything short of that takes it out of the outbox again (it was not accepted)."""
    kept = None
    if ingest.outbox is not None:  # the blob store down: StoreUnavailable, a 503 (app.py)
        kept = await run_in_threadpool(ingest.outbox.keep, topic, key, value, headers)
        headers = kept.message_headers()
    try:
        await run_in_threadpool(ingest.producer.send_and_wait, topic, key, value, headers)
    except BaseException as exc:
        if kept is not None and ingest.outbox is not None:
            await run_in_threadpool(ingest.outbox.done, kept.name)
        if isinstance(exc, BrokerUnavailable):
            raise HTTPException(503, str(exc), {"Retry-After": "5"}) from None
        raise


def _image_format(data: bytes, max_pixels: int) -> str:
    """The image's format, read from its content (never its name); 422 if it is none."""
    try:
        return probe(data, max_pixels, verify=True).format
    except DecodeError as exc:
        raise HTTPException(422, f"the upload is not a usable image: {exc}") from None
