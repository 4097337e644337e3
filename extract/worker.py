"""One message's path, as small functions the pipeline composes: parse, fetch and decode
(in the decode threads), the record that is stored, and the dead-letter topic."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from confluent_kafka import Message

from extract.decode import MAX_REFERENCE_BYTES, DecodeError, decode, fetch, probe
from extract.preprocess import to_uint8
from ingest.producer import KafkaProducer
from schemas.messages import DeleteMessage, ImageMessage, MessageError, parse_image_topic
from schemas.records import Extracted, ImageRecord

log = logging.getLogger(__name__)
GPU_JPEG_MODES = ("RGB", "L")  # nvJPEG handles these; CMYK and the rest go through Pillow


@dataclass(frozen=True)
class DecodeOptions:
    max_pixels: int
    fetch_timeout_s: float = 10.0
    max_reference_bytes: int = MAX_REFERENCE_BYTES
    jpeg_on_device: bool = False  # leave JPEGs encoded: the GPU decodes them in one batch


@dataclass(frozen=True)
class Decoded:
    """Ready for the model: (3, 224, 224) uint8 pixels."""

    message: ImageMessage
    pixels: torch.Tensor
    width: int
    height: int
    size_bytes: int


@dataclass(frozen=True)
class Encoded:
    """A JPEG whose header passed the checks, left for the batched GPU decoder."""

    message: ImageMessage
    data: bytes
    width: int
    height: int

    @property
    def size_bytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Rejected:
    raw: Message
    stage: str  # parse | decode
    reason: str


Outcome = Decoded | Encoded | Rejected | DeleteMessage


def decode_message(raw: Message, opts: DecodeOptions) -> Outcome:
    """Kafka message -> pixels, a removal to apply, or the reason it cannot become pixels."""
    try:
        message = parse_image_topic(raw.headers(), raw.value())
    except MessageError as exc:
        return Rejected(raw, "parse", str(exc))
    if isinstance(message, DeleteMessage):
        return message
    try:
        return decode_image(message, opts)
    except DecodeError as exc:
        return Rejected(raw, "decode", str(exc))
    except Exception as exc:  # error policy: hostile input that trips a decoder bug is dead-lettered
        log.warning("unexpected error decoding %s", message.image_id, exc_info=True)
        return Rejected(raw, "decode", f"{type(exc).__name__}: {exc}")


def decode_image(message: ImageMessage, opts: DecodeOptions) -> Decoded | Encoded:
    data = fetch(message, opts.fetch_timeout_s, opts.max_reference_bytes)
    if opts.jpeg_on_device:
        header = probe(data, opts.max_pixels)
        if header.format == "JPEG" and header.mode in GPU_JPEG_MODES:
            return Encoded(message, data, header.width, header.height)
    image = decode(data, opts.max_pixels)
    return Decoded(message, to_uint8(image), image.width, image.height, len(data))


def extracted(item: Decoded | Encoded, vector: npt.NDArray[np.float32], model: str) -> Extracted:
    m = item.message
    record = ImageRecord(
        m.listing_id,
        m.image_id,
        m.source or f"kafka:{m.image_id}",
        m.content_type,
        item.width,
        item.height,
        item.size_bytes,
    )
    return Extracted(record, m.listing_name, model, vector)


class DeadLetters:
    """Sends rejected messages to the dead-letter topic, the reason in headers."""

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self.producer, self.topic = producer, topic

    def send(self, rejected: Sequence[Rejected]) -> None:
        """Returns once the broker has them all (before the batch's offsets are committed)."""
        for r in rejected:
            log.warning(
                "dead letter %s[%d]@%d (%s): %s",
                r.raw.topic(),
                r.raw.partition(),
                r.raw.offset(),
                r.stage,
                r.reason,
            )
            self.producer.send(self.topic, r.raw.key() or b"", *self._value_and_headers(r))
        if rejected:
            self.producer.flush()

    def _value_and_headers(self, r: Rejected) -> tuple[bytes, list[tuple[str, str | bytes | None]]]:
        headers: list[tuple[str, str | bytes | None]] = [
            *(r.raw.headers() or []),
            ("error", r.reason.encode()),
            ("error_stage", r.stage.encode()),
            ("source_topic", str(r.raw.topic()).encode()),
            ("source_partition", str(r.raw.partition()).encode()),
            ("source_offset", str(r.raw.offset()).encode()),
        ]
        value = r.raw.value() or b""
        if len(value) > self.producer.max_message_bytes:  # keep the reason, drop the bulk
            return b"", [*headers, ("value_dropped", str(len(value)).encode())]
        return value, headers
