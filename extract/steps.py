"""One message's path, as small functions the pipeline composes: parse, fetch and decode
(in the decode threads), the record that is stored, and the dead-letter topic.

A reference into the blob store (what ``lookalike reembed`` sends) is read through it, with
the writer's retries: a blob store that stays unreachable fails the pipeline (nothing is
committed), pixels that are gone are dead-lettered with the reason."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)

from extract.decode import MAX_REFERENCE_BYTES, DecodeError, decode, fetch, probe
from extract.preprocess import CROP, RESIZE, to_uint8
from messaging.consumer import Message
from messaging.errors import BrokerUnavailable
from messaging.producer import KafkaProducer
from schemas.messages import DeleteMessage, ImageMessage, MessageError, parse_image_topic
from schemas.records import Extracted, ImageRecord
from store import StoreUnavailable
from store.blobs import BlobMissing, BlobStore

log = logging.getLogger(__name__)
GPU_JPEG_MODES = ("RGB", "L")  # nvJPEG handles these; CMYK and the rest go through Pillow


@dataclass(frozen=True)
class DecodeOptions:
    max_pixels: int
    fetch_timeout_s: float = 10.0
    max_reference_bytes: int = MAX_REFERENCE_BYTES
    jpeg_on_device: bool = False  # leave JPEGs encoded: the GPU decodes them in one batch
    resize: int = RESIZE  # the model's input recipe (FeatureModel.input_size): short side,
    crop: int = CROP  # then the centre crop
    model: str = ""  # the worker's model: a message for another model is refused
    blobs: BlobStore | None = None  # references into it are read through it
    read_blob: Callable[[str], bytes] | None = None  # blobs.get with the writer's retries


@dataclass(frozen=True)
class Decoded:
    """Ready for the model: (3, 224, 224) uint8 pixels."""

    message: ImageMessage
    pixels: torch.Tensor
    width: int
    height: int
    size_bytes: int
    data: bytes = b""  # the original bytes, kept in the blob store by the writer
    content_type: str = ""  # read from the content; empty: the message's


@dataclass(frozen=True)
class Encoded:
    """A JPEG whose header passed the checks, left for the batched GPU decoder."""

    message: ImageMessage
    data: bytes
    width: int
    height: int
    content_type: str = ""

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
    if message.model and opts.model and message.model != opts.model:
        reason = f"this message is for model {message.model}; this worker serves {opts.model}"
        return Rejected(raw, "model", reason)
    try:
        return decode_image(message, opts)
    except DecodeError as exc:
        return Rejected(raw, "decode", str(exc))
    except StoreUnavailable:  # the blob store stayed down through the retries: stop, commit nothing
        raise
    except Exception as exc:  # error policy: hostile input that trips a decoder bug is dead-lettered
        log.warning("unexpected error decoding %s", message.image_id, exc_info=True)
        return Rejected(raw, "decode", f"{type(exc).__name__}: {exc}")


def decode_image(message: ImageMessage, opts: DecodeOptions) -> Decoded | Encoded:
    data = fetch_pixels(message, opts)
    header = probe(data, opts.max_pixels)
    content_type = Image.MIME.get(header.format, message.content_type) if message.is_reference else ""
    if opts.jpeg_on_device and header.format == "JPEG" and header.mode in GPU_JPEG_MODES:
        return Encoded(message, data, header.width, header.height, content_type)
    image = decode(data, opts.max_pixels)
    pixels = to_uint8(image, opts.resize, opts.crop)
    return Decoded(message, pixels, image.width, image.height, len(data), data, content_type)


def fetch_pixels(message: ImageMessage, opts: DecodeOptions) -> bytes:
    """The message's bytes, or what its reference points at; blob-store references through
    the blob store (an ``s3://`` one included)."""
    uri = message.payload.decode("utf-8", "replace").strip() if message.is_reference else ""
    if not uri or opts.blobs is None or not opts.blobs.owns(uri):
        return fetch(message, opts.fetch_timeout_s, opts.max_reference_bytes)
    try:
        data = (opts.read_blob or opts.blobs.get)(uri)
    except BlobMissing as exc:
        raise DecodeError(f"the pixels of image {message.image_id} are gone: {exc}") from None
    if len(data) > opts.max_reference_bytes:
        raise DecodeError(f"{uri} is over the limit of {opts.max_reference_bytes} bytes")
    return data


def kept_pixels(item: Decoded | Encoded, blobs: BlobStore | None) -> bytes | None:
    """The bytes the writer keeps in the blob store: None when they are already there
    (a re-embedding reads them from it) or there is no blob store."""
    m = item.message
    if blobs is None or (m.is_reference and blobs.owns(m.payload.decode("utf-8", "replace").strip())):
        return None
    return item.data or None


def extracted(item: Decoded | Encoded, vector: npt.NDArray[np.float32], model: str) -> Extracted:
    """The stored record; the writer replaces ``uri`` by the blob's URI when it keeps the pixels
    (a re-embedding's source is its blob's URI already)."""
    m = item.message
    record = ImageRecord(
        m.listing_id,
        m.image_id,
        m.source or f"kafka:{m.image_id}",
        item.content_type or m.content_type,
        item.width,
        item.height,
        item.size_bytes,
    )
    return Extracted(record, m.listing_name, model, vector)


class DeadLetters:
    """Sends rejected messages to the dead-letter topic, the reason in headers. A broker
    outage is waited out (each message retried with backoff until acknowledged; one sent
    twice across an outage is harmless), so a bad image met during one stops nothing."""

    def __init__(self, producer: KafkaProducer, topic: str, give_up_after_s: float | None = None) -> None:
        self.producer, self.topic = producer, topic
        self._retrying = Retrying(
            retry=retry_if_exception_type(BrokerUnavailable),
            wait=wait_exponential_jitter(multiplier=0.5, max=30),
            stop=stop_never if give_up_after_s is None else stop_after_delay(give_up_after_s),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )

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
            self._retrying(
                self.producer.send_and_wait, self.topic, r.raw.key() or b"", *self._value_and_headers(r)
            )

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
