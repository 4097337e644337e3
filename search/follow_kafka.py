"""Following the extract stream: the ids of images on ``lookalike.images`` say what is about to
be extracted; once a worker has stored an image's vector it is read (one listing slice) and
added to the index. A removal on the topic drops the image or listing at once (and any of its
images still waiting). A poll costs what changed, not a scan of the store.

The follower reads the topic from a point in time (a little before the index was loaded) with
its own consumer that never commits, so every API replica sees every image.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from lookalike.settings import KafkaConfig
from schemas.messages import ImageMessage, MessageError, parse_image_topic
from schemas.records import FeatureBatch, ModelInfo
from search.engine import VectorIndex
from search.follow import Changes
from store import Store

log = logging.getLogger(__name__)
CHECK_PER_POLL = 5000  # pending images looked up in the store per poll (a backlog is taken in turns)


class ImageStreamSource:
    """Images announced on the topic, picked up from the store once their vectors exist."""

    def __init__(
        self,
        client_config: KafkaConfig,
        topic: str,
        store: Store,
        model: ModelInfo,
        index: VectorIndex,
        since_ms: int,
        max_wait_s: float = 3600.0,
    ) -> None:
        self.store, self.model, self.index, self.max_wait_s = store, model, index, max_wait_s
        self.pending: dict[uuid.UUID, tuple[uuid.UUID, float]] = {}  # image -> (listing, seen at)
        self._consumer = Consumer(
            {
                **client_config,
                "group.id": f"lookalike-index-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        self._assign(topic, since_ms)

    def _assign(self, topic: str, since_ms: int) -> None:
        try:
            meta = self._consumer.list_topics(topic, timeout=10)
        except KafkaException as exc:
            raise RuntimeError(f"cannot follow {topic}: {exc}") from None
        partitions = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
        if not partitions:
            raise RuntimeError(f"topic {topic} does not exist (yet): nothing to follow")
        wanted = [TopicPartition(topic, p, since_ms) for p in partitions]
        try:
            start = self._consumer.offsets_for_times(wanted, timeout=10)
        except KafkaException as exc:  # a broker without time lookups: read from the start
            log.warning("offsets by time unavailable (%s): following %s from its beginning", exc, topic)
            start = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
        self._consumer.assign(start)

    def poll(self) -> Changes:
        removed_images, removed_listings = self._read_announcements()
        return Changes(self._stored_vectors(), _ids(removed_images), _ids(removed_listings))

    def _read_announcements(self, max_messages: int = 1000) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """Announced images become pending; returns the images and listings removed."""
        now = time.monotonic()
        removed_images: list[uuid.UUID] = []
        removed_listings: list[uuid.UUID] = []
        for m in self._consumer.consume(max_messages, timeout=0.05):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(err)
            try:
                msg = parse_image_topic(m.headers(), m.value())
            except MessageError:
                continue  # the workers dead-letter it; nothing will be stored
            if isinstance(msg, ImageMessage):
                self.pending.setdefault(msg.image_id, (msg.listing_id, now))
            elif msg.image_id is not None:
                self.pending.pop(msg.image_id, None)
                removed_images.append(msg.image_id)
            else:
                for image in [i for i, (listing, _) in self.pending.items() if listing == msg.listing_id]:
                    del self.pending[image]
                removed_listings.append(msg.listing_id)
        return removed_images, removed_listings

    def _stored_vectors(self) -> FeatureBatch:
        if not self.pending:
            return FeatureBatch.empty(self.model.dim)
        ids = list(self.pending)
        for image, held in zip(ids, np.isin(_ids(ids), self.index.image_id_array()), strict=True):
            if held:  # re-sent image the index already has
                del self.pending[image]
        checked = list(itertools.islice(self.pending, CHECK_PER_POLL))
        stored = self.store.existing_images(checked, self.model.name)
        by_listing: dict[uuid.UUID, list[uuid.UUID]] = {}
        for image in checked:  # found ones leave; the rest go to the back of the line
            entry = self.pending.pop(image)
            if image in stored:
                by_listing.setdefault(entry[0], []).append(image)
            else:
                self.pending[image] = entry
        self._expire()
        return FeatureBatch.concat(
            [self._rows(listing, images) for listing, images in by_listing.items()], self.model.dim
        )

    def _rows(self, listing: uuid.UUID, images: list[uuid.UUID]) -> FeatureBatch:
        batch = self.store.listing_features(listing, self.model)
        keep = np.isin(batch.image_ids, _ids(images))
        return FeatureBatch(batch.listing_ids[keep], batch.image_ids[keep], batch.vectors[keep])

    def _expire(self) -> None:
        """Images never stored (dead-lettered, or for another model) stop being watched."""
        too_old = time.monotonic() - self.max_wait_s
        for image in [i for i, (_, seen) in self.pending.items() if seen < too_old]:
            del self.pending[image]

    def close(self) -> None:
        self._consumer.close()


def _ids(ids: Iterable[uuid.UUID]) -> npt.NDArray[np.bytes_]:
    return np.array([u.bytes for u in ids], dtype="S16")
