"""Every vector of one model from the store's scan into one preallocated buffer (no copy spike)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from schemas.records import FeatureBatch
from search.scoring import group_starts


@dataclass(frozen=True)
class Catalogue:
    """The vectors of a run, grouped by listing (a listing's rows contiguous)."""

    image_ids: npt.NDArray[np.bytes_]  # S16
    listing_ids: npt.NDArray[np.bytes_]  # S16
    vectors: npt.NDArray[np.floating]  # (n, dim), float16 or float32

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def starts(self) -> npt.NDArray[np.int64]:
        return group_starts(self.listing_ids)


def load_catalogue(
    batches: Iterable[FeatureBatch], dim: int, capacity: int, dtype: str = "float16", on_batch: object = None
) -> Catalogue:
    """Stream batches into buffers of ``capacity`` rows (an upper bound, e.g. the store's row count:
    untouched pages of np.empty cost no memory); grows by half when it is passed."""
    cap = max(1, capacity)
    vectors = np.empty((cap, dim), dtype=np.dtype(dtype))
    images = np.empty(cap, dtype="S16")
    listings = np.empty(cap, dtype="S16")
    n = 0
    for fb in batches:
        m = len(fb)
        if n + m > len(vectors):
            grow = max(n + m, len(vectors) * 3 // 2)
            vectors = np.resize(vectors, (grow, dim))
            images, listings = np.resize(images, grow), np.resize(listings, grow)
        vectors[n : n + m] = fb.vectors
        images[n : n + m] = fb.image_ids
        listings[n : n + m] = fb.listing_ids
        n += m
        if callable(on_batch):
            on_batch(m)
    listing_view = listings[:n]
    if n > 1 and len(group_starts(listing_view)) != len(np.unique(listing_view)):
        # a listing's rows contiguous is the scan's contract; order here only if a backend broke it
        order = np.lexsort((images[:n], listing_view))
        return Catalogue(images[:n][order], listing_view[order], vectors[:n][order])
    return Catalogue(images[:n], listing_view, vectors[:n])
