"""A synthetic catalogue with planted truth (clusters, outliers, cross-listing duplicates, misfits),
for the tests and ``bench/analyze.py``. Deterministic for a seed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analytics.load import Catalogue
from schemas.records import FeatureBatch


@dataclass(frozen=True)
class Planted:
    catalogue: Catalogue
    labels: npt.NDArray[np.int64]  # true cluster of each row (-1: a planted outlier)
    outliers: npt.NDArray[np.int64]  # rows
    duplicates: list[tuple[int, int]]  # (row, row) pairs across listings
    misfits: npt.NDArray[np.int64]  # rows

    def batches(self, size: int = 4096) -> Iterator[FeatureBatch]:
        c = self.catalogue
        for s in range(0, len(c), size):
            yield FeatureBatch(
                c.listing_ids[s : s + size],
                c.image_ids[s : s + size],
                c.vectors[s : s + size].astype(np.float32),
            )


def planted_catalogue(
    n: int, dim: int, clusters: int, per_listing: int = 5, rate: float = 0.002, noise: float = 0.6,
    seed: int = 0, dtype: str = "float16",
) -> Planted:  # fmt: skip
    """n images in listings of ``per_listing`` views; each listing draws from one cluster centre.

    ``rate`` of the images each become an outlier (a random direction), a misfit (a view from
    another cluster) or a near-duplicate of an image of another listing (tiny noise)."""
    rng = np.random.default_rng(seed)
    listings = max(1, n // per_listing)
    n = listings * per_listing
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    listing_cluster = rng.integers(0, clusters, listings)
    labels = np.repeat(listing_cluster, per_listing).astype(np.int64)
    vectors = np.empty((n, dim), dtype=np.dtype(dtype))
    chunk = per_listing * 4096  # chunks end on listing boundaries
    # a listing's views share a listing centre near its cluster centre, then per-view noise
    listing_offsets_scale = 0.5
    for s in range(0, n, chunk):
        rows = np.arange(s, min(n, s + chunk))
        lst = rows // per_listing
        lrng = np.random.default_rng([seed, s])
        base = centres[labels[rows]]
        loff = np.stack(
            [np.random.default_rng([seed, 7, int(li)]).standard_normal(dim) for li in np.unique(lst)]
        )
        loff = loff[np.searchsorted(np.unique(lst), lst)] * listing_offsets_scale
        v = base + loff + noise * lrng.standard_normal((len(rows), dim)).astype(np.float32)
        vectors[rows] = v / np.linalg.norm(v, axis=1, keepdims=True)
    count = max(1, int(rate * n))
    picks = rng.choice(n, size=4 * count, replace=False)
    outliers, misfits = np.sort(picks[:count]), np.sort(picks[count : 2 * count])
    dup_src, dup_dst = picks[2 * count : 3 * count], picks[3 * count :]
    for r in outliers:
        v = rng.standard_normal(dim)
        vectors[r] = v / np.linalg.norm(v)
        labels[r] = -1
    for r in misfits:
        other = (listing_cluster[r // per_listing] + 1 + rng.integers(0, clusters - 1)) % clusters
        v = centres[other] + noise * rng.standard_normal(dim)
        vectors[r] = v / np.linalg.norm(v)
        labels[r] = other
    duplicates = []
    for a, b in zip(dup_src, dup_dst, strict=True):
        if a // per_listing == b // per_listing:
            continue
        v = vectors[a].astype(np.float32) + 0.05 * rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
        vectors[b] = v / np.linalg.norm(v)
        labels[b] = labels[a]
        duplicates.append((int(min(a, b)), int(max(a, b))))
    listing_ids = np.array([uuid.UUID(int=(seed << 64) + i + 1).bytes for i in range(listings)], dtype="S16")
    image_ids = np.array([uuid.UUID(int=(seed << 96) + (1 << 95) + i).bytes for i in range(n)], dtype="S16")
    cat = Catalogue(image_ids, np.repeat(listing_ids, per_listing), vectors)
    return Planted(cat, labels, outliers, duplicates, misfits)
