"""The in-memory engine: exact inner-product search over every stored vector of one model,
aggregated per listing. Rows are kept sorted by (listing, image) so a listing is one slice."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from rich.progress import Progress

from schemas.records import FeatureBatch, ModelInfo, as_uuid
from search import scoring
from search.scoring import ScoreOptions
from store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankedListing:
    listing_id: uuid.UUID
    score: float
    matches: tuple[tuple[uuid.UUID, float], ...]


class UnknownId(KeyError):
    """An image or listing id the index does not hold."""

    def __str__(self) -> str:
        return str(self.args[0])


class ExactIndex:
    """All vectors of one model in memory; ``search`` scores every one of them."""

    def __init__(self, model: ModelInfo) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._set(FeatureBatch.empty(model.dim))

    def _set(self, batch: FeatureBatch) -> None:
        order = np.lexsort((batch.image_ids, batch.listing_ids))
        self.listing_rows = batch.listing_ids[order]
        self.image_ids = batch.image_ids[order]
        self.vectors = np.ascontiguousarray(batch.vectors[order], dtype=np.float32)
        self.starts = scoring.group_starts(self.listing_rows)
        self.listing_ids = self.listing_rows[self.starts]

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def listing_count(self) -> int:
        return len(self.starts)

    def add(self, batch: FeatureBatch) -> None:
        """Add or replace vectors (an image id already present is replaced)."""
        if batch.vectors.shape[1:] != (self.model.dim,):
            raise ValueError(f"vectors must have {self.model.dim} columns, got {batch.vectors.shape}")
        with self._lock:
            keep = ~np.isin(self.image_ids, batch.image_ids)
            current = FeatureBatch(self.listing_rows[keep], self.image_ids[keep], self.vectors[keep])
            self._set(FeatureBatch.concat([current, batch], self.model.dim))

    def remove_listing(self, listing_id: uuid.UUID) -> None:
        with self._lock:
            keep = self.listing_rows != np.bytes_(listing_id.bytes)
            self._set(FeatureBatch(self.listing_rows[keep], self.image_ids[keep], self.vectors[keep]))

    def listing_vectors(self, listing_id: uuid.UUID) -> npt.NDArray[np.float32]:
        rows = np.flatnonzero(self.listing_rows == np.bytes_(listing_id.bytes))
        if len(rows) == 0:
            raise UnknownId(f"listing {listing_id} has no vectors of model {self.model.name}")
        return self.vectors[rows]

    def image_vector(self, image_id: uuid.UUID) -> tuple[uuid.UUID, npt.NDArray[np.float32]]:
        rows = np.flatnonzero(self.image_ids == np.bytes_(image_id.bytes))
        if len(rows) == 0:
            raise UnknownId(f"image {image_id} has no vector of model {self.model.name}")
        return as_uuid(self.listing_rows[rows[0]]), self.vectors[rows[0]]

    def search(
        self,
        query: npt.NDArray[np.float32],
        opts: ScoreOptions,
        exclude: Iterable[uuid.UUID] = (),
        only: set[uuid.UUID] | None = None,
    ) -> list[RankedListing]:
        """Top-k listings for one L2-normalised query vector. ``only`` restricts the
        candidates (e.g. to in-stock listings); ``exclude`` removes some."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape != (self.model.dim,):
            raise ValueError(f"query vector must have {self.model.dim} values, got {q.shape[0]}")
        with self._lock:
            vectors, starts, listing_ids, image_ids = (
                self.vectors,
                self.starts,
                self.listing_ids,
                self.image_ids,
            )
        scores = vectors @ q
        per_listing = scoring.aggregate(scores, starts, opts)
        allowed = np.ones(len(listing_ids), dtype=bool)
        if only is not None:
            allowed &= np.isin(listing_ids, np.array([u.bytes for u in only], dtype="S16"))
        for listing in exclude:
            allowed &= listing_ids != np.bytes_(listing.bytes)
        ends = np.append(starts[1:], len(scores))
        out = []
        for i in scoring.rank(per_listing, listing_ids, allowed, opts):
            found = scoring.matches(scores, int(starts[i]), int(ends[i]), opts.max_matches)
            out.append(
                RankedListing(
                    as_uuid(listing_ids[i]),
                    float(per_listing[i]),
                    tuple((as_uuid(image_ids[r]), s) for r, s in found),
                )
            )
        return out


def load_index(store: Store, model: ModelInfo, progress: bool = False) -> ExactIndex:
    """Read every vector of ``model`` from the store into a new index."""
    index = ExactIndex(model)
    batches = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"loading {model.name} vectors", total=None)
        for batch in store.scan_features(model):
            batches.append(batch)
            bar.advance(task, len(batch))
    index.add(FeatureBatch.concat(batches, model.dim))
    log.info("index: %d vectors of %s in %d listings", len(index), model.name, index.listing_count)
    return index
