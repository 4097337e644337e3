"""Synthetic clustered vectors for the search benchmark: listings of a few images each, every
listing's images near one of many cluster centres, L2-normalised, held as float16."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from schemas.codec import l2_normalise
from search import kernel

CHUNK = 8192


@dataclass(frozen=True)
class Data:
    listing_ids: npt.NDArray[np.bytes_]  # S16 per row, sorted
    image_ids: npt.NDArray[np.bytes_]
    vectors: npt.NDArray[np.float16]
    centres: npt.NDArray[np.float32]
    listing_cluster: npt.NDArray[np.int64]


def _ids(rng: np.random.Generator, n: int) -> npt.NDArray[np.bytes_]:
    return np.frombuffer(rng.bytes(16 * n), dtype="S16").copy()


def make(rows: int, dim: int, per_listing: int = 4, clusters: int = 0, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    listings = -(-rows // per_listing)
    clusters = clusters or max(1, listings // 25)
    centres = l2_normalise(rng.standard_normal((clusters, dim), dtype=np.float32))
    listing_cluster = rng.integers(0, clusters, size=listings)
    listing_ids = np.sort(_ids(rng, listings))
    row_listing = np.arange(rows) // per_listing
    vectors = np.empty((rows, dim), dtype=np.float16)
    for start in range(0, rows, CHUNK):
        stop = min(rows, start + CHUNK)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) / np.sqrt(dim)
        block = centres[listing_cluster[row_listing[start:stop]]] + noise
        vectors[start:stop] = kernel.narrow(l2_normalise(block), np.dtype(np.float16))
    rows_listing = listing_ids[row_listing]
    image_ids = _ids(rng, rows)
    image_ids = image_ids[np.lexsort((image_ids, rows_listing))]  # the index's order: no copy
    return Data(rows_listing, image_ids, vectors, centres, listing_cluster)


def queries(data: Data, n: int, seed: int = 1) -> npt.NDArray[np.float32]:
    """Photos like catalogue ones: a stored vector plus as much noise again."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(data.vectors), size=n)
    picked = kernel.widen(data.vectors[rows])
    dim = picked.shape[1]
    return l2_normalise(picked + rng.standard_normal(picked.shape, dtype=np.float32) / np.sqrt(dim))
