"""Segments of rows and the immutable view a search reads.

A :class:`Segment` holds rows sorted by (listing, image), one row per image. A :class:`View`
combines the main segment (with tombstones), the fresh segment and the optional ANN into the
live rows in (listing, image) order: ``order`` maps each live row to its place in
``[main rows; fresh rows]``, so the big main matrix is never copied when something changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.records import FeatureBatch
from search import flat, kernel, scoring
from search.flat import FlatIndex

I64 = npt.NDArray[np.int64]
Ids = npt.NDArray[np.bytes_]
COPY_ROWS = 65536  # rows gathered at a time while building (bounds the temporary copy)


def _keys(listing_rows: Ids, image_ids: Ids) -> Ids:
    """(listing, image) as one 32-byte key per row, ordered like the pair."""
    pairs = np.empty((len(listing_rows), 32), dtype=np.uint8)
    pairs[:, :16] = np.ascontiguousarray(listing_rows, dtype="S16").view(np.uint8).reshape(-1, 16)
    pairs[:, 16:] = np.ascontiguousarray(image_ids, dtype="S16").view(np.uint8).reshape(-1, 16)
    return pairs.view("S32").reshape(-1)


@dataclass(frozen=True)
class Segment:
    listing_ids: Ids  # S16 per row, sorted
    image_ids: Ids  # S16, unique
    vectors: kernel.Vectors  # (rows, dim) in the index's dtype
    keys: Ids  # S32 (listing, image), sorted
    flat: FlatIndex | None = None  # a FAISS flat index whose storage ``vectors`` is

    def __len__(self) -> int:
        return len(self.image_ids)

    @staticmethod
    def empty(dtype: np.dtype[Any], dim: int) -> Segment:
        return Segment.build([FeatureBatch.empty(dim)], dtype, dim)

    @staticmethod
    def build(
        parts: list[FeatureBatch | Segment],
        dtype: np.dtype[Any],
        dim: int,
        alive: npt.NDArray[np.bool_] | None = None,
        with_flat: bool = False,
    ) -> Segment:
        """Rows of ``parts`` sorted by (listing, image); of rows sharing an image id, the last
        wins; rows where ``alive`` (over the concatenated parts) is False are left out. The
        vectors are copied once, in bounded chunks (into a FAISS flat index's storage when
        ``with_flat``), or not at all when already in order."""
        whole = parts[0] if len(parts) == 1 and isinstance(parts[0], Segment) else None
        if (
            with_flat
            and alive is None
            and whole is not None
            and whole.flat is not None
            and whole.vectors.dtype == dtype
        ):
            return whole  # a segment is sorted and unique: already what was asked
        listing_rows = np.concatenate([np.zeros(0, "S16"), *(p.listing_ids for p in parts)])
        image_ids = np.concatenate([np.zeros(0, "S16"), *(p.image_ids for p in parts)])
        n = len(image_ids)
        order = _order(listing_rows, image_ids, alive)
        rows, images = listing_rows[order], image_ids[order]
        if with_flat:
            index, vectors = flat.allocate(len(order), dim, dtype)
            _gather_parts(parts, order, dtype, vectors)
            return Segment(rows, images, vectors, _keys(rows, images), flat.seal(index, vectors))
        if len(parts) == 1 and parts[0].vectors.dtype == dtype and np.array_equal(order, np.arange(n)):
            vectors = parts[0].vectors  # already sorted: no copy
        else:
            vectors = np.empty((len(order), dim), dtype=dtype)
            _gather_parts(parts, order, dtype, vectors)
        return Segment(rows, images, vectors, _keys(rows, images))

    @staticmethod
    def stream(
        batches: Iterable[FeatureBatch],
        rows: int,
        dtype: np.dtype[Any],
        dim: int,
        on_batch: Callable[[int], object] | None = None,
        out: kernel.Vectors | None = None,
    ) -> tuple[Segment, list[FeatureBatch]]:
        """A main segment (in a FAISS flat index) from a scan, with no second matrix: the index
        is sized for ``rows`` (the store's count) and each batch is written straight into it,
        one batch converted at a time; rows are then put in (listing, image) order in place
        (a scan in that order, as SQLite's, needs no move). Rows past ``rows`` (stored after
        the count) come back as batches, for the fresh tier; fewer rows leave the rest unused.
        Of rows sharing an image id, the last wins. ``out``: a (rows, dim) array to fill
        instead (a snapshot file's writable map); the segment then has no flat index."""
        if out is None:
            index, vectors = flat.allocate(rows, dim, dtype)
        elif out.shape != (rows, dim) or out.dtype != dtype:
            raise ValueError(f"out must be ({rows}, {dim}) {dtype}, got {out.shape} {out.dtype}")
        else:
            index, vectors = None, out
        listing_parts, image_parts, late = [np.zeros(0, "S16")], [np.zeros(0, "S16")], []
        filled = 0
        for batch in batches:
            if batch.vectors.ndim != 2 or batch.vectors.shape[1] != dim:
                raise ValueError(f"scanned vectors must be (n, {dim}), got {batch.vectors.shape}")
            take = min(len(batch), rows - filled)
            if take:
                kernel.narrow_into(batch.vectors[:take], vectors[filled : filled + take])
                listing_parts.append(batch.listing_ids[:take])
                image_parts.append(batch.image_ids[:take])
                filled += take
            if take < len(batch):
                late.append(
                    FeatureBatch(batch.listing_ids[take:], batch.image_ids[take:], batch.vectors[take:])
                )
            if on_batch is not None:
                on_batch(len(batch))
        listing_rows, image_ids = np.concatenate(listing_parts), np.concatenate(image_parts)
        order = _order(listing_rows, image_ids)
        if not np.array_equal(order, np.arange(filled)):
            dropped = np.setdiff1d(np.arange(filled), order, assume_unique=True)
            kernel.permute_rows(vectors[:filled], np.concatenate([order, dropped]))
        kept = vectors[: len(order)]
        rows_, images = listing_rows[order], image_ids[order]
        sealed = None if index is None else flat.seal(index, kept)
        return Segment(rows_, images, kept, _keys(rows_, images), sealed), late

    def take(self, mask: npt.NDArray[np.bool_]) -> Segment:
        return Segment(self.listing_ids[mask], self.image_ids[mask], self.vectors[mask], self.keys[mask])

    @cached_property
    def _by_image(self) -> tuple[I64, Ids]:
        """Row numbers in image id order, and the ids in that order: sorted once per segment
        (a segment never changes), on its first lookup."""
        order = np.argsort(self.image_ids, kind="stable")
        return order, self.image_ids[order]

    def image_row(self, image: bytes) -> int | None:
        """The row holding this image id (16 bytes), or None: a binary search, not a scan."""
        order, ids = self._by_image
        key = np.array([image], dtype="S16")  # compared as arrays: trailing NUL bytes count
        i = int(np.searchsorted(ids, key)[0])
        if i < len(ids) and bool((ids[i : i + 1] == key)[0]):
            return int(order[i])
        return None


def _order(listing_rows: Ids, image_ids: Ids, alive: npt.NDArray[np.bool_] | None = None) -> I64:
    """Row numbers in (listing, image) order; of rows sharing an image id the last is kept;
    rows where ``alive`` is False are left out."""
    n = len(image_ids)
    _, first_reversed = np.unique(image_ids[::-1], return_index=True)
    keep = n - 1 - first_reversed.astype(np.int64)
    if alive is not None:
        keep = keep[alive[keep]]
    order: I64 = keep[np.lexsort((image_ids[keep], listing_rows[keep]))]
    return order


def _gather_parts(
    parts: list[FeatureBatch | Segment], order: I64, dtype: np.dtype[Any], vectors: kernel.Vectors
) -> None:
    """Rows ``order`` of the concatenated parts into ``vectors``, in bounded chunks."""
    offset = 0
    for p in parts:
        at = np.flatnonzero((order >= offset) & (order < offset + len(p)))
        for chunk in range(0, len(at), COPY_ROWS):
            where = at[chunk : chunk + COPY_ROWS]
            vectors[where] = kernel.narrow(p.vectors[order[where] - offset], dtype)
        offset += len(p)


@dataclass(frozen=True)
class View:
    """Live rows in (listing, image) order; what one search reads, never changed."""

    main: Segment
    main_alive: npt.NDArray[np.bool_]
    fresh: Segment
    ann: Any  # faiss_device.Placed: the ANN over the main segment's rows, or None
    order: I64  # live row -> position in [main rows; fresh rows]
    listing_rows: Ids = field(repr=False)
    image_ids: Ids = field(repr=False)
    starts: I64 = field(repr=False)
    ends: I64 = field(repr=False)
    listing_ids: Ids = field(repr=False)

    def vectors(self, positions: I64) -> kernel.Vectors:
        """Vectors at positions of ``[main rows; fresh rows]``."""
        n = len(self.main)
        in_main = positions < n
        out: kernel.Vectors = np.empty((len(positions), self.main.vectors.shape[1]), self.main.vectors.dtype)
        out[in_main] = self.main.vectors[positions[in_main]]
        out[~in_main] = self.fresh.vectors[positions[~in_main] - n]
        return out

    def score_by_query(self, queries: kernel.F32) -> kernel.F32:
        """(queries, live rows) scores in view order: one matrix product per segment, each
        written straight into its part of one by-query matrix."""
        n = len(self.main)
        both = np.empty((len(queries), n + len(self.fresh)), dtype=np.float32)
        kernel.score(self.main.vectors, queries, out=both[:, :n].T)
        if len(self.fresh) == 0 and len(self.order) == n:
            return both  # nothing removed or added since the main segment was built
        kernel.score(self.fresh.vectors, queries, out=both[:, n:].T)
        return both[:, self.order]

    def image_position(self, image: bytes) -> int | None:
        """Where a live image's row is in ``[main rows; fresh rows]``, or None. A fresh row
        wins (a replaced main row is tombstoned); the main segment is searched through its
        sorted image ids, so a lookup costs a binary search at any catalogue size."""
        at = np.flatnonzero(self.fresh.image_ids == np.array([image], dtype="S16"))
        if len(at):
            return len(self.main) + int(at[0])
        row = self.main.image_row(image)
        return row if row is not None and bool(self.main_alive[row]) else None

    def listing_index(self, listing: bytes) -> int | None:
        key = np.array([listing], dtype="S16")  # compared as arrays: trailing NUL bytes count
        i = int(np.searchsorted(self.listing_ids, key)[0])
        if i < len(self.listing_ids) and bool((self.listing_ids[i : i + 1] == key)[0]):
            return i
        return None


def make_view(main: Segment, alive: npt.NDArray[np.bool_], fresh: Segment, ann: Any) -> View:
    n = len(main)
    if len(fresh) == 0:
        order = np.flatnonzero(alive).astype(np.int64)
    else:
        merged = np.insert(np.arange(n), np.searchsorted(main.keys, fresh.keys), n + np.arange(len(fresh)))
        live = np.concatenate([alive, np.ones(len(fresh), dtype=bool)])
        order = merged[live[merged]].astype(np.int64)
    if len(order) == n and len(fresh) == 0:  # the main rows as they are: their ids, not a copy
        listing_rows, image_ids = main.listing_ids, main.image_ids
    else:
        listing_rows = np.concatenate([main.listing_ids, fresh.listing_ids])[order]
        image_ids = np.concatenate([main.image_ids, fresh.image_ids])[order]
    starts = scoring.group_starts(listing_rows)
    ends = np.append(starts[1:], len(order)).astype(np.int64)
    return View(main, alive, fresh, ann, order, listing_rows, image_ids, starts, ends, listing_rows[starts])
