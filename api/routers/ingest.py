"""Ingest over HTTP (API key required): an image upload into Kafka, a stock update, and the
removal of an image or a listing."""

from __future__ import annotations

import hashlib
import io
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.deps import Service, Settings, require_key
from api.producer import ApiProducer, BrokerUnavailable
from ingest.remove import UnknownTarget, removal
from schemas import ids
from schemas.messages import Headers, ImageMessage, stock_value
from schemas.records import StockLevel
from search.service import SearchService

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


def _producer(request: Request) -> ApiProducer:
    producer: ApiProducer | None = request.app.state.producer
    if producer is None:
        raise HTTPException(503, "ingest needs a broker: set LOOKALIKE_KAFKA_BOOTSTRAP")
    return producer


Producer = Annotated[ApiProducer, Depends(_producer)]


@router.post("/images", status_code=202, response_model=Accepted)
async def upload_image(
    producer: Producer,
    settings: Settings,
    service: Service,
    image: Annotated[UploadFile, File(description="the photo; its type is read from its content")],
    listing: Annotated[str, Form(min_length=1, max_length=500, description="the listing's external name")],
) -> Accepted:
    """Queue a photo for extraction. The same bytes for the same listing get the same id."""
    limit = min(settings.max_upload_bytes, producer.kafka.max_message_bytes)
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"the image is over the limit of {limit} bytes")
    fmt = await run_in_threadpool(image_format, data, service.max_pixels)
    lid = ids.listing_id(listing)
    iid = ids.image_id(listing, hashlib.sha256(data).hexdigest())
    message = ImageMessage(lid, iid, listing, Image.MIME.get(fmt, "application/octet-stream"), "upload", data)
    await _send(producer, producer.kafka.images_topic, message.key(), data, message.headers())
    return Accepted(listing_id=lid, image_id=iid, topic=producer.kafka.images_topic)


@router.post("/stock", status_code=202, response_model=Accepted)
async def update_stock(update: StockUpdate, producer: Producer) -> Accepted:
    """Queue a stock level; the stock follower applies it to the store."""
    lid = update.listing_id or ids.listing_id(update.listing or "")
    level = StockLevel(lid, update.inventory, uuid.uuid4())
    await _send(producer, producer.kafka.stock_topic, str(lid).encode(), stock_value(level), [])
    return Accepted(listing_id=lid, topic=producer.kafka.stock_topic)


@router.delete("/images/{image_id}", status_code=202, response_model=Accepted)
async def remove_image(image_id: uuid.UUID, producer: Producer, service: Service) -> Accepted:
    """Remove an image: gone from this replica's results at once, from the store (and the
    other replicas) once the workers reach the removal, after the listing's earlier uploads."""
    return await _remove(producer, service, None, image_id)


@router.delete("/listings/{listing_id}", status_code=202, response_model=Accepted)
async def remove_listing(listing_id: uuid.UUID, producer: Producer, service: Service) -> Accepted:
    """Remove a listing with its images, vectors and stock, as an image removal does."""
    return await _remove(producer, service, listing_id, None)


async def _remove(
    producer: ApiProducer, service: SearchService, listing_id: uuid.UUID | None, image_id: uuid.UUID | None
) -> Accepted:
    try:
        message = await run_in_threadpool(removal, service.store, listing_id, image_id)
    except UnknownTarget as exc:
        raise HTTPException(404, str(exc)) from None
    topic = producer.kafka.images_topic
    await _send(producer, topic, message.key(), b"", message.headers())
    if message.image_id is None:
        service.index.remove_listing(message.listing_id)
    else:
        service.index.remove_images([message.image_id])
    return Accepted(listing_id=message.listing_id, image_id=message.image_id, topic=topic)


async def _send(producer: ApiProducer, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
    try:
        await run_in_threadpool(producer.send, topic, key, value, headers)
    except BrokerUnavailable as exc:
        raise HTTPException(503, str(exc)) from None


def image_format(data: bytes, max_pixels: int) -> str:
    """The image's format, read from its content (never its name); 422 if it is none."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format or "", image.size
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise HTTPException(422, f"the upload is not a usable image: {exc}") from None
    if width * height > max_pixels:
        raise HTTPException(422, f"the image is {width}x{height} pixels, over the limit of {max_pixels}")
    return fmt
