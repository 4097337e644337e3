"""Producers: images to ``lookalike.images`` (keyed by listing), stock to ``lookalike.stock``.

Delivery is confirmed through callbacks; ``flush`` raises if any message failed.
"""

from __future__ import annotations

import logging
import mimetypes
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaError, Message, Producer

from ingest.catalogue import Catalogue
from lookalike.settings import KafkaConfig
from schemas import ids
from schemas.messages import URI_LIST, Headers, ImageMessage, stock_value
from schemas.records import StockLevel

log = logging.getLogger(__name__)


class MessageTooLarge(ValueError):
    """An image larger than the broker accepts."""


class DeliveryFailed(RuntimeError):
    """The broker did not acknowledge some messages."""


@dataclass
class _Deliveries:
    ok: int = 0
    errors: list[str] = field(default_factory=list)

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.ok += 1
        else:
            self.errors.append(f"{msg.topic()}: {err.str()}")


class KafkaProducer:
    """A confluent-kafka producer with delivery accounting (idempotent, acks=all)."""

    def __init__(self, client_config: KafkaConfig, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.deliveries = _Deliveries()
        self._producer = Producer(
            {
                **client_config,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "message.max.bytes": max_message_bytes + 64 * 1024,
            }
        )

    def send(self, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
        if len(value) > self.max_message_bytes:
            raise MessageTooLarge(
                f"message of {len(value)} bytes for {topic} is over the broker limit of "
                f"{self.max_message_bytes} (LOOKALIKE_KAFKA_MAX_MESSAGE_BYTES); "
                "send a reference instead (--by-reference)"
            )
        while True:
            try:
                self._producer.produce(
                    topic, key=key, value=value, headers=headers, on_delivery=self.deliveries
                )
                break
            except BufferError:  # local queue full: serve callbacks, then try again
                self._producer.poll(0.5)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> int:
        left = self._producer.flush(timeout_s)
        if left or self.deliveries.errors:
            raise DeliveryFailed(
                f"{left} message(s) undelivered, {len(self.deliveries.errors)} failed: "
                f"{self.deliveries.errors[:3]}"
            )
        return self.deliveries.ok

    def __enter__(self) -> KafkaProducer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if t is None:
            self.flush()


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
