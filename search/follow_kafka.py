"""Following the extract stream: the ids of images on ``lookalike.images`` say what is about to
be extracted; once a worker has stored an image's vector it is read (one listing slice) and
added to the index. A removal on the topic drops the image or listing at once (and any of its
images still waiting). A poll costs what changed, not a scan of the store.

The follower reads the topic from a point in time (a little before the index was loaded) with
its own consumer that never commits, so every API replica sees every image. A topic that does
not exist yet, or a broker that is away, is waited for (:class:`messaging.tail.TopicTail`):
what is published once it is there is read from its beginning, so nothing is missed.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Iterable, Iterator

import numpy as np

from config.settings import KafkaConfig
from messaging.tail import TopicTail
from schemas.messages import DeleteMessage, ImageMessage, MessageError, parse_image_topic
from schemas.records import FeatureBatch, ModelInfo, id_array
from search.follow import Changes
from search.tier import SearchIndex
from store import Store

log = logging.getLogger(__name__)
CHECK_PER_POLL = 5000  # pending images looked up in the store per poll (a backlog is taken in turns)


class PendingImages:
    """Images announced on the images topic whose vectors are not stored yet: looked up in the
    store in turns (``CHECK_PER_POLL`` a poll), forgotten when removed, or after ``max_wait_s``
    (never stored: dead-lettered, or for another model). Shared by the in-memory index's
    follower and the Spark search service's."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self._seen: dict[uuid.UUID, tuple[uuid.UUID, float]] = {}  # image -> (listing, seen at)

    def __contains__(self, image: object) -> bool:
        return image in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def __iter__(self) -> Iterator[uuid.UUID]:
        return iter(list(self._seen))

    def announce(self, msg: ImageMessage, now: float) -> None:
        self._seen.setdefault(msg.image_id, (msg.listing_id, now))

    def removed(self, msg: DeleteMessage) -> None:
        """A removal announced: its image, or every image of its listing, stops being watched."""
        if msg.image_id is not None:
            self._seen.pop(msg.image_id, None)
            return
        for image in [i for i, (listing, _) in self._seen.items() if listing == msg.listing_id]:
            del self._seen[image]

    def drop(self, images: Iterable[uuid.UUID]) -> None:
        for image in images:
            self._seen.pop(image, None)

    def take_stored(self, store: Store, model: str) -> dict[uuid.UUID, list[uuid.UUID]]:
        """The pending images now stored, by listing; they stop being pending (the ones looked
        up and not found go to the back of the line)."""
        if not self._seen:
            return {}
        checked = list(itertools.islice(self._seen, CHECK_PER_POLL))
        stored = store.existing_images(checked, model)
        by_listing: dict[uuid.UUID, list[uuid.UUID]] = {}
        for image in checked:
            entry = self._seen.pop(image)
            if image in stored:
                by_listing.setdefault(entry[0], []).append(image)
            else:
                self._seen[image] = entry
        too_old = time.monotonic() - self.max_wait_s
        for image in [i for i, (_, seen) in self._seen.items() if seen < too_old]:
            del self._seen[image]
        return by_listing


class ImageStreamSource:
    """Images announced on the topic, picked up from the store once their vectors exist."""

    def __init__(
        self,
        client_config: KafkaConfig,
        topic: str,
        store: Store,
        model: ModelInfo,
        index: SearchIndex,
        since_ms: int,
        max_wait_s: float = 3600.0,
    ) -> None:
        self.store, self.model, self.index = store, model, index
        self.pending = PendingImages(max_wait_s)
        self._tail = TopicTail(client_config, topic, since_ms)

    @property
    def status(self) -> str:
        """What the follower does: ``following <topic>``, or what it waits for."""
        return self._tail.status

    def poll(self) -> Changes:
        removed_images, removed_listings = self._read_announcements()
        return Changes(self._stored_vectors(), id_array(removed_images), id_array(removed_listings))

    def _read_announcements(self, max_messages: int = 1000) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """Announced images become pending; returns the images and listings removed."""
        now = time.monotonic()
        removed_images: list[uuid.UUID] = []
        removed_listings: list[uuid.UUID] = []
        for headers, value in self._tail.read(max_messages):
            try:
                msg = parse_image_topic(headers, value)
            except MessageError:
                continue  # the workers dead-letter it; nothing will be stored
            if isinstance(msg, ImageMessage):
                self.pending.announce(msg, now)
                continue
            self.pending.removed(msg)
            if msg.image_id is not None:
                removed_images.append(msg.image_id)
            else:
                removed_listings.append(msg.listing_id)
        return removed_images, removed_listings

    def _stored_vectors(self) -> FeatureBatch:
        if not self.pending:
            return FeatureBatch.empty(self.model.dim)
        ids = list(self.pending)
        held = np.isin(id_array(ids), self.index.image_id_array())
        self.pending.drop(image for image, h in zip(ids, held, strict=True) if h)  # re-sent, already held
        by_listing = self.pending.take_stored(self.store, self.model.name)
        return FeatureBatch.concat(
            [self._rows(listing, images) for listing, images in by_listing.items()], self.model.dim
        )

    def _rows(self, listing: uuid.UUID, images: list[uuid.UUID]) -> FeatureBatch:
        batch = self.store.listing_features(listing, self.model)
        keep = np.isin(batch.image_ids, id_array(images))
        return FeatureBatch(batch.listing_ids[keep], batch.image_ids[keep], batch.vectors[keep])

    def close(self) -> None:
        self._tail.close()
