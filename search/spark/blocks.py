"""The unit the Spark search service holds and scores: a block of whole listings.

A block is one float16 (or float32) matrix with its image and listing ids, sorted by listing
(image ids ascending within one), so a pass scores it with one matrix product and aggregates a
listing where its images are. A listing is never split across blocks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from schemas.codec import numpy_dtype
from schemas.records import FeatureBatch
from search import kernel, scoring

S16 = npt.NDArray[np.bytes_]
FIELDS = ("listing_ids", "starts", "image_ids", "vectors")


@dataclass(frozen=True)
class Block:
    """Rows of whole listings, grouped by listing (image ids ascending within one)."""

    listing_ids: S16  # one per listing, in row order
    starts: npt.NDArray[np.int64]  # first row of each listing
    image_ids: S16  # one per row
    vectors: kernel.Vectors  # (rows, dim), the engine's in-memory dtype

    @property
    def rows(self) -> int:
        return len(self.image_ids)


def blocks_of(batch: FeatureBatch, dtype: str, max_rows: int) -> Iterator[Block]:
    """``batch`` (whole listings) as blocks of at most ``max_rows`` rows (a larger listing is a
    block of its own), sorted as the engine sorts: by listing, then image."""
    if len(batch) == 0:
        return
    order = np.lexsort((batch.image_ids, batch.listing_ids))
    listing_rows, image_ids = batch.listing_ids[order], batch.image_ids[order]
    vectors = kernel.narrow(batch.vectors[order], numpy_dtype(dtype))
    starts = scoring.group_starts(listing_rows)
    cut, first = [0], 0
    for i, s in enumerate(starts.tolist()):
        if s - cut[-1] >= max_rows and i > first:
            cut.append(s)
            first = i
    bounds = [*cut, len(listing_rows)]
    for lo, hi in itertools.pairwise(bounds):
        mine = starts[(starts >= lo) & (starts < hi)]
        yield Block(
            listing_rows[mine].copy(),
            (mine - lo).astype(np.int64),
            image_ids[lo:hi].copy(),
            vectors[lo:hi].copy(),
        )
