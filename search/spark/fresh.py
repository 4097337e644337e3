"""The driver's fresh set: listings that changed after the cache was loaded.

The driver follows the images topic (as the in-memory index does, :mod:`search.follow_kafka`):
an image announced there is looked for in the store until a worker has stored its vector, then
its listing's current vectors are read (one listing slice) and held here; a removal drops the
image or the listing at once. Every listing held here, and every removed one, is *hidden* from
the executors' passes: the driver scores the listing's current vectors itself, and the two top
k lists are merged, so a listing is always scored whole, with the engine's aggregation, from
one place. A compaction (a reload of the cache) lets go of what the new cache holds.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from config.settings import KafkaConfig
from messaging.errors import MessagingError
from messaging.tail import TopicTail
from schemas.messages import DeleteMessage, ImageMessage, MessageError, parse_image_topic
from schemas.records import FeatureBatch, ModelInfo, id_array
from search.follow_kafka import PendingImages
from search.spark.batch import Fresh
from search.spark.blocks import blocks_of
from search.spark.metrics import ServeMetrics
from store import Store, StoreError

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    rows: FeatureBatch  # the listing's current vectors (none: removed)
    seq: int  # when it was last changed
    removed_images: set[uuid.UUID] = field(default_factory=set)  # the store may still hold them
    removed_listing: bool = False


class FreshSet:
    """Thread-safe: the follower changes it, each batch takes a :meth:`snapshot`."""

    def __init__(self, store: Store, model: ModelInfo, dtype: str, block_rows: int) -> None:
        self.store, self.model, self.dtype, self.block_rows = store, model, dtype, block_rows
        self._lock = threading.Lock()
        self._entries: dict[uuid.UUID, _Entry] = {}
        self._seq = 0
        self._snapshot: Fresh | None = Fresh()

    @property
    def rows(self) -> int:
        with self._lock:
            return sum(len(e.rows) for e in self._entries.values())

    @property
    def seq(self) -> int:
        with self._lock:
            return self._seq

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def refresh(self, listings: Iterable[uuid.UUID]) -> None:
        """Read these listings' current vectors from the store (less the removed images)."""
        for listing in listings:
            batch = self.store.listing_features(listing, self.model)
            with self._lock:
                entry = self._entries.get(listing)
                removed = set(entry.removed_images) if entry is not None else set()
                if removed:
                    keep = ~np.isin(batch.image_ids, id_array(removed))
                    batch = FeatureBatch(batch.listing_ids[keep], batch.image_ids[keep], batch.vectors[keep])
                self._put(listing, _Entry(batch, 0, removed))

    def remove_images(self, listing: uuid.UUID, images: Iterable[uuid.UUID]) -> None:
        with self._lock:
            entry = self._entries.get(listing)
            removed = (entry.removed_images if entry is not None else set()) | set(images)
            self._put(listing, _Entry(FeatureBatch.empty(self.model.dim), 0, removed))
        self.refresh([listing])

    def remove_listing(self, listing: uuid.UUID) -> None:
        with self._lock:
            self._put(listing, _Entry(FeatureBatch.empty(self.model.dim), 0, removed_listing=True))

    def restore_image(self, listing: uuid.UUID, image: uuid.UUID) -> None:
        """An image sent again after its removal is no longer removed."""
        with self._lock:
            entry = self._entries.get(listing)
            if entry is not None:
                entry.removed_images.discard(image)

    def _put(self, listing: uuid.UUID, entry: _Entry) -> None:
        self._seq += 1
        entry.seq = self._seq
        self._entries[listing] = entry
        self._snapshot = None

    def snapshot(self) -> Fresh:
        """The blocks to score on the driver and the listings the cache must not rank."""
        with self._lock:
            if self._snapshot is None:
                rows = FeatureBatch.concat([e.rows for e in self._entries.values()], self.model.dim)
                hidden = np.sort(id_array(self._entries))
                self._snapshot = Fresh(tuple(blocks_of(rows, self.dtype, self.block_rows)), hidden)
            return self._snapshot

    # -- compaction -------------------------------------------------------------------------
    def settled(self) -> dict[uuid.UUID, int]:
        """Entries a cache loaded from now on holds as they are (listing -> seq): their
        removals are done in the store (the topic announces a removal before a worker applies
        it). Taken before a reload starts."""
        with self._lock:
            entries = {k: (e.seq, set(e.removed_images), e.removed_listing) for k, e in self._entries.items()}
        settled = {}
        for listing, (seq, removed, gone) in entries.items():
            if gone and len(self.store.listing_features(listing, self.model)):
                continue
            if removed and self.store.existing_images(list(removed), self.model.name):
                continue
            settled[listing] = seq
        return settled

    def forget(self, settled: dict[uuid.UUID, int]) -> int:
        """After the reload: drop the settled entries that did not change since. Returns how many."""
        with self._lock:
            gone = [k for k, seq in settled.items() if k in self._entries and self._entries[k].seq == seq]
            for k in gone:
                del self._entries[k]
            if gone:
                self._snapshot = None
        return len(gone)


class FreshFollower:
    """Follows the images topic on a daemon thread into a :class:`FreshSet`. An outage of the
    store or the broker is logged and retried each interval, never fatal."""

    def __init__(
        self,
        fresh: FreshSet,
        client_config: KafkaConfig,
        topic: str,
        since_ms: int,
        interval_s: float,
        metrics: ServeMetrics,
        max_wait_s: float = 3600.0,
    ) -> None:
        self.fresh, self.interval_s, self.metrics = fresh, interval_s, metrics
        self.pending = PendingImages(max_wait_s)
        self._tail = TopicTail(client_config, topic, since_ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spark-serve-follower", daemon=True)
        self._failure: str | None = None

    @property
    def status(self) -> str:
        return f"retrying: {self._failure}" if self._failure else self._tail.status

    def start(self) -> FreshFollower:
        self._thread.start()
        return self

    def poll_once(self) -> int:
        """Apply what the topic said since the last poll; the listings changed."""
        changed = self._read()
        changed += self._stored()
        if changed:
            self.metrics.fresh(self.fresh.rows, len(self.fresh))
        return changed

    def _read(self) -> int:
        changed = 0
        now = time.monotonic()
        for headers, value in self._tail.read(1000):
            try:
                msg = parse_image_topic(headers, value)
            except MessageError:
                continue  # the workers dead-letter it; nothing will be stored
            if isinstance(msg, ImageMessage):
                self.pending.announce(msg, now)
                self.fresh.restore_image(msg.listing_id, msg.image_id)
            else:
                changed += self._removal(msg)
        return changed

    def _removal(self, msg: DeleteMessage) -> int:
        self.pending.removed(msg)
        if msg.image_id is not None:
            self.fresh.remove_images(msg.listing_id, [msg.image_id])
        else:
            self.fresh.remove_listing(msg.listing_id)
        return 1

    def _stored(self) -> int:
        """Listings whose pending images are stored now: read whole into the fresh set."""
        listings = set(self.pending.take_stored(self.fresh.store, self.fresh.model.name))
        self.fresh.refresh(listings)
        return len(listings)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                n = self.poll_once()
            except (StoreError, MessagingError) as exc:
                if self._failure is None:
                    log.warning("fresh follower: %s; retrying every %.1fs", exc, self.interval_s)
                self._failure = str(exc)
            except BaseException:
                log.exception("fresh follower stopped: new vectors no longer reach the answers")
                self._failure = "stopped (see the log)"
                raise
            else:
                if self._failure is not None:
                    log.info("fresh follower: following again")
                    self._failure = None
                if n:
                    log.info("fresh follower: %d listings changed (%d fresh rows)", n, self.fresh.rows)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._tail.close()
