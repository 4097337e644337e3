"""Kafka message formats.

``lookalike.images``: key = listing_id (so one listing's images share a partition); value = the
image bytes, or a reference URI (``file://``, ``http(s)://``) with content type
``text/uri-list``; ids, names and content type travel in headers.
``lookalike.stock``: key = listing_id; value = JSON ``{"listing_id", "inventory", "etag"}``.
``lookalike.images.dlq``: the original message, plus ``error`` and ``error_stage`` headers.

Re-embedding (``lookalike reembed --model NAME``) produces references to the kept pixels on
the model's own topic, ``lookalike.images.<NAME>`` (:func:`model_topic`), with a ``model``
header naming the target model; only workers that loaded that model subscribe to it, and a
worker refuses (dead-letters) a message whose ``model`` header names another model. Messages
without the header (every fresh upload) are for whichever model the consuming worker serves.

What the API acknowledged with a 202 (an upload, a removal, a stock level) carries an
``outbox`` header naming its record in the ingest outbox (``store/outbox.py``); the worker that
stored it clears that record. Readers that do not know the header ignore it.

A removal travels on ``lookalike.images`` too, so it is ordered with the listing's uploads (same
key, same partition): header ``op: delete``, an empty value, ``image_id`` for one image or no
``image_id`` for the whole listing. Workers apply it to the store in stream order; index
followers drop the images at once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from schemas.records import StockLevel

FORMAT_VERSION = "1"
URI_LIST = "text/uri-list"
UPSERT, DELETE = "upsert", "delete"  # the ``op`` header of lookalike.images (absent: upsert)
OUTBOX = "outbox"  # header: the outbox record of a message the API acknowledged
Headers = list[tuple[str, str | bytes | None]]
RawHeaders = Headers | Mapping[str, str | bytes | None] | None  # as the client hands them over


class MessageError(ValueError):
    """A message that does not follow the contract; it goes to the dead-letter topic."""


@dataclass(frozen=True)
class ImageMessage:
    listing_id: uuid.UUID
    image_id: uuid.UUID
    listing_name: str
    content_type: str  # image/jpeg, image/png, ... or text/uri-list for a reference
    source: str  # where it came from (a file URI, an upload); images.uri is where its pixels are kept
    payload: bytes
    model: str = ""  # the model this message is for (re-embedding); empty: any worker's

    @property
    def is_reference(self) -> bool:
        return self.content_type == URI_LIST

    def key(self) -> bytes:
        return str(self.listing_id).encode()

    def headers(self) -> Headers:
        return [
            ("format", FORMAT_VERSION.encode()),
            ("listing_id", str(self.listing_id).encode()),
            ("image_id", str(self.image_id).encode()),
            ("listing_name", self.listing_name.encode()),
            ("content_type", self.content_type.encode()),
            ("source", self.source.encode()),
            *([("model", self.model.encode())] if self.model else []),
        ]

    @staticmethod
    def from_kafka(headers: RawHeaders, value: bytes | None) -> ImageMessage:
        h = _text_headers(headers)
        missing = [k for k in ("listing_id", "image_id", "content_type") if k not in h]
        if missing:
            raise MessageError(f"missing headers {missing}")
        try:
            listing, image = uuid.UUID(h["listing_id"]), uuid.UUID(h["image_id"])
        except ValueError as exc:
            raise MessageError(f"bad id header: {exc}") from None
        if not value:
            raise MessageError("empty message value")
        return ImageMessage(
            listing,
            image,
            h.get("listing_name", ""),
            h["content_type"],
            h.get("source", ""),
            value,
            h.get("model", ""),
        )


@dataclass(frozen=True)
class DeleteMessage:
    listing_id: uuid.UUID
    image_id: uuid.UUID | None = None  # None: the whole listing

    def key(self) -> bytes:
        return str(self.listing_id).encode()

    def headers(self) -> Headers:
        image = [("image_id", str(self.image_id).encode())] if self.image_id else []
        return [
            ("format", FORMAT_VERSION.encode()),
            ("op", DELETE.encode()),
            ("listing_id", str(self.listing_id).encode()),
            *image,
        ]


def parse_image_topic(headers: RawHeaders, value: bytes | None) -> ImageMessage | DeleteMessage:
    """A message of ``lookalike.images``: an image to extract, or a removal."""
    h = _text_headers(headers)
    if h.get("op", UPSERT) == UPSERT:
        return ImageMessage.from_kafka(h, value)
    if h["op"] != DELETE:
        raise MessageError(f"unknown op {h['op']!r} (expected {UPSERT!r} or {DELETE!r})")
    if value:
        raise MessageError("a delete carries no value")
    try:
        listing = uuid.UUID(h["listing_id"])
        image = uuid.UUID(h["image_id"]) if "image_id" in h else None
    except KeyError:
        raise MessageError("a delete needs a listing_id header") from None
    except ValueError as exc:
        raise MessageError(f"bad id header: {exc}") from None
    return DeleteMessage(listing, image)


def outbox_name(headers: RawHeaders) -> str | None:
    """The outbox record a message was kept under (see :data:`OUTBOX`), if any."""
    return _text_headers(headers).get(OUTBOX) or None


def model_topic(images_topic: str, model: str) -> str:
    """The topic that carries re-embedding work for one model: ``lookalike.images.<model>``."""
    return f"{images_topic}.{model}"


def _text_headers(headers: RawHeaders) -> dict[str, str]:
    pairs = headers.items() if isinstance(headers, Mapping) else headers or []
    return {k: v if isinstance(v, str) else v.decode("utf-8", "replace") for k, v in pairs if v is not None}


def stock_value(level: StockLevel) -> bytes:
    return json.dumps(
        {"listing_id": str(level.listing_id), "inventory": level.inventory, "etag": str(level.etag)}
    ).encode()


def parse_stock(value: bytes | None) -> StockLevel:
    try:
        doc = json.loads(value or b"")
        return StockLevel(uuid.UUID(doc["listing_id"]), int(doc["inventory"]), uuid.UUID(doc["etag"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise MessageError(f"bad stock message: {exc}") from None
