"""What ingest produces: images to ``lookalike.images`` (keyed by listing, stable ids) and stock
to ``lookalike.stock``, through the one producer of :mod:`messaging.producer`."""

from __future__ import annotations

import logging
import mimetypes
import uuid
from collections.abc import Iterable
from pathlib import Path

from ingest.catalogue import Catalogue
from messaging.producer import KafkaProducer
from schemas import ids
from schemas.messages import URI_LIST, ImageMessage, stock_value
from schemas.records import StockLevel

log = logging.getLogger(__name__)


def image_messages(
    catalogue: Catalogue, *, by_reference: bool = False, skip: Iterable[uuid.UUID] = ()
) -> Iterable[ImageMessage]:
    """One message per catalogue image, with stable ids; images in ``skip`` are left out."""
    skipped = set(skip)
    for listing in catalogue.listings:
        lid = ids.listing_id(listing.name)
        for path in listing.images:
            iid = ids.image_id(listing.name, path.name)
            if iid in skipped:
                continue
            yield image_message(lid, iid, listing.name, path, by_reference=by_reference)


def image_message(
    listing_id: uuid.UUID, image_id: uuid.UUID, listing_name: str, path: Path, *, by_reference: bool
) -> ImageMessage:
    uri = path.resolve().as_uri()
    if by_reference:
        return ImageMessage(listing_id, image_id, listing_name, URI_LIST, uri, uri.encode())
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return ImageMessage(listing_id, image_id, listing_name, content_type, uri, path.read_bytes())


def catalogue_stock(catalogue: Catalogue) -> list[StockLevel]:
    return [
        StockLevel(ids.listing_id(name), inventory, uuid.uuid4())
        for name, inventory in catalogue.stock.items()
    ]


def send_images(producer: KafkaProducer, topic: str, messages: Iterable[ImageMessage]) -> int:
    n = 0
    for m in messages:
        producer.send(topic, m.key(), m.payload, m.headers())
        n += 1
    return n


def send_stock(producer: KafkaProducer, topic: str, levels: Iterable[StockLevel]) -> int:
    n = 0
    for level in levels:
        producer.send(topic, str(level.listing_id).encode(), stock_value(level), [])
        n += 1
    return n
