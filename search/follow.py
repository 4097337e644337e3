"""Keeping a loaded index fresh: a follower thread applies what a change source reports.

A change source says which vectors appeared (upserts) and which images are gone. The one here,
:class:`StoreScanSource`, diffs a scan of the store against the index; it needs nothing beyond
the Store protocol but reads every vector of the model on each poll (see README: a
``features`` change feed in the store would make a poll cost what changed, not the table).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from messaging.errors import MessagingError
from schemas.records import FeatureBatch, ModelInfo, as_uuid
from search.tier import SearchIndex
from store import Store, StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Changes:
    """Removals apply before upserts."""

    upserts: FeatureBatch
    removed_images: npt.NDArray[np.bytes_]  # S16
    removed_listings: npt.NDArray[np.bytes_] = field(default_factory=lambda: np.zeros(0, "S16"))

    def __len__(self) -> int:
        return len(self.upserts) + len(self.removed_images) + len(self.removed_listings)


class ChangeSource(Protocol):
    def poll(self) -> Changes:
        """What changed since the last poll (or since the index was loaded)."""
        ...


class StoreScanSource:
    """Diffs a scan of the store against the index: rows the index lacks are upserts, images
    the store no longer has are removals."""

    def __init__(self, store: Store, model: ModelInfo, index: SearchIndex) -> None:
        self.store, self.model, self.index = store, model, index

    def poll(self) -> Changes:
        held = self.index.image_id_array()
        upserts, seen = [], []
        for batch in self.store.scan_features(self.model):
            new = ~np.isin(batch.image_ids, held)
            if new.any():
                upserts.append(FeatureBatch(batch.listing_ids[new], batch.image_ids[new], batch.vectors[new]))
            seen.append(batch.image_ids)
        stored = np.concatenate([np.zeros(0, "S16"), *seen])
        return Changes(FeatureBatch.concat(upserts, self.model.dim), held[~np.isin(held, stored)])


def apply(index: SearchIndex, changes: Changes) -> None:
    if len(changes.removed_listings):
        index.remove_listings(as_uuid(i) for i in changes.removed_listings)
    if len(changes.removed_images):
        index.remove_images(as_uuid(i) for i in changes.removed_images)
    if len(changes.upserts):
        index.add(changes.upserts)


# Called with what the follower applied, after it is searchable (e.g. the roof wires analytics'
# scoring of arrivals here: search never imports analytics).
ChangeObserver = Callable[[SearchIndex, Changes], None]


class Follower:
    """Polls a change source every ``interval_s`` on a daemon thread, applies it, then tells the
    observers. An observer's failure is logged and never stops the index following; nor does
    an outage of the store or the broker (logged, retried each interval). :attr:`status`
    says what it does: the source's own ``status`` when it has one (what a stream source
    waits for), else ``following``, or the failure it retries."""

    def __init__(
        self,
        index: SearchIndex,
        source: ChangeSource,
        interval_s: float,
        observers: Sequence[ChangeObserver] = (),
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"the follow interval must be positive, got {interval_s}")
        self.index, self.source, self.interval_s = index, source, interval_s
        self.observers = tuple(observers)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="index-follower", daemon=True)
        self.polls = 0
        self._failure: str | None = None

    @property
    def status(self) -> str:
        if self._failure is not None:
            return f"retrying: {self._failure}"
        described = getattr(self.source, "status", None)
        return described if isinstance(described, str) else "following"

    def start(self) -> Follower:
        self._thread.start()
        return self

    def poll_once(self) -> int:
        changes = self.source.poll()
        apply(self.index, changes)
        self.polls += 1
        if len(changes):
            for observe in self.observers:
                try:
                    observe(self.index, changes)
                except Exception:  # the observer's own bug: keep the index fresh regardless
                    log.exception("index follower: observer %r failed", observe)
        return len(changes)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                n = self.poll_once()
            except (StoreError, MessagingError) as exc:  # an outage: keep the index, retry
                if self._failure is None:
                    log.warning("index follower: %s; retrying every %.1fs", exc, self.interval_s)
                self._failure = str(exc)
            except BaseException:
                log.exception("index follower stopped: the index no longer follows new vectors")
                self._failure = "stopped: the index no longer follows new vectors (see the log)"
                raise
            else:
                if self._failure is not None:
                    log.info("index follower: following again")
                    self._failure = None
                if n:
                    log.info("index follower: applied %d changes", n)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
