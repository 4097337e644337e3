"""The extract worker: Kafka batch -> fetch+decode (thread pool) -> CNN -> store -> commit.

Bad messages go to the dead-letter topic with the reason in headers; the worker goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from confluent_kafka import Message
from PIL import Image

from extract.decode import DecodeError, decode, fetch
from extract.model import FeatureModel
from extract.writer import StoreWriter
from ingest.producer import KafkaProducer
from schemas.messages import ImageMessage, MessageError
from schemas.records import Extracted, ImageRecord

log = logging.getLogger(__name__)
STAGES = ("decode", "infer", "write", "dlq")


@dataclass
class StageTimes:
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    images: int = 0
    dead_letters: int = 0

    def add(self, stage: str, started: float) -> None:
        self.seconds[stage] += time.perf_counter() - started


@dataclass(frozen=True)
class Decoded:
    message: ImageMessage
    image: Image.Image
    size_bytes: int


@dataclass(frozen=True)
class Rejected:
    raw: Message
    stage: str
    reason: str


class ImageHandler:
    """Handles one Kafka batch of ``lookalike.images``; raises only if the store is down."""

    def __init__(
        self,
        model: FeatureModel,
        writer: StoreWriter,
        dlq: KafkaProducer,
        dlq_topic: str,
        max_pixels: int,
        decode_threads: int = 4,
    ) -> None:
        self.model, self.writer, self.dlq, self.dlq_topic = model, writer, dlq, dlq_topic
        self.max_pixels = max_pixels
        self.times = StageTimes()
        self._pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")

    def __call__(self, batch: Sequence[Message]) -> None:
        t = time.perf_counter()
        outcomes = list(self._pool.map(self._decode_one, batch))
        self.times.add("decode", t)
        good = [o for o in outcomes if isinstance(o, Decoded)]
        rejected = [o for o in outcomes if isinstance(o, Rejected)]

        t = time.perf_counter()
        vectors = self.model.embed_images([d.image for d in good])
        self.times.add("infer", t)

        t = time.perf_counter()
        self.writer.write([self._extracted(d, v) for d, v in zip(good, vectors, strict=True)])
        self.times.add("write", t)

        t = time.perf_counter()
        self._dead_letter(rejected)
        self.times.add("dlq", t)
        self.times.images += len(good)

    def _decode_one(self, raw: Message) -> Decoded | Rejected:
        try:
            message = ImageMessage.from_kafka(raw.headers(), raw.value())
        except MessageError as exc:
            return Rejected(raw, "parse", str(exc))
        try:
            data = fetch(message)
            return Decoded(message, decode(data, self.max_pixels), len(data))
        except DecodeError as exc:
            return Rejected(raw, "decode", str(exc))

    def _extracted(self, d: Decoded, vector: npt.NDArray[np.float32]) -> Extracted:
        m = d.message
        record = ImageRecord(
            m.listing_id,
            m.image_id,
            m.source or f"kafka:{m.image_id}",
            m.content_type,
            d.image.width,
            d.image.height,
            d.size_bytes,
        )
        return Extracted(record, m.listing_name, self.model.info.name, vector)

    def _dead_letter(self, rejected: list[Rejected]) -> None:
        for r in rejected:
            log.warning(
                "dead letter %s[%d]@%d (%s): %s",
                r.raw.topic(),
                r.raw.partition(),
                r.raw.offset(),
                r.stage,
                r.reason,
            )
            headers = [
                *(r.raw.headers() or []),
                ("error", r.reason.encode()),
                ("error_stage", r.stage.encode()),
                ("source_topic", str(r.raw.topic()).encode()),
                ("source_partition", str(r.raw.partition()).encode()),
                ("source_offset", str(r.raw.offset()).encode()),
            ]
            value = r.raw.value() or b""
            if len(value) > self.dlq.max_message_bytes:  # keep the reason, drop the bulk
                value, headers = b"", [*headers, ("value_dropped", str(len(value)).encode())]
            self.dlq.send(self.dlq_topic, r.raw.key() or b"", value, headers)
        if rejected:
            self.dlq.flush()  # delivered before the batch's offsets are committed
            self.times.dead_letters += len(rejected)

    def close(self) -> None:
        self._pool.shutdown()
