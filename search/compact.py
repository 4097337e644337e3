"""The compact tier: for catalogues larger than memory, about 0.6 KB an image instead of 8 KB.

Memory holds, per image, a PCA-reduced float16 code in an IVF (:mod:`search.compact_codes`)
and its listing and image ids. A query's codes propose ``compact_candidates`` images; every
listing they belong to is read from the store (``Store.listings_features``: one partition a
listing) and rescored exactly with the shared scoring (``kernel.score``, ``scoring``), so
scores are exact and only recall can fall short; recall@10 against exact answers is measured
when the index is built and logged.

Changes behave as in the in-memory tier: vectors added later sit in a small exact *fresh* tier
(full vectors in memory) and are searched exactly beside the codes; past
``compact_fresh_max_rows`` they are encoded into (a copy of) the IVF and their full vectors
dropped. Removed images are left out of proposals through a bitmap of live rows and out of
rescoring by id. Rescoring scores what the store holds now for a proposed listing, less what
the index removed, with the fresh tier's vectors winning over the store's; rows the index
encoded must therefore be in the store (the follower only applies stored rows).

Every change publishes a new immutable :class:`_View`, which searches read without locks.
Building from the store is :mod:`search.compact_build`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from config.settings import SearchSettings
from schemas.codec import numpy_dtype
from schemas.records import FeatureBatch, ModelInfo, as_uuid, id_array
from search import kernel, scoring, tier
from search.compact_codes import Codes
from search.engine import UnknownId
from search.scoring import RankedListing, ScoreOptions, SearchRequest
from store import Store

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Ids = npt.NDArray[np.bytes_]


@dataclass(frozen=True)
class Rows:
    """Rows sorted by (listing, image) with full vectors in the index's dtype."""

    listing_ids: Ids
    image_ids: Ids
    vectors: kernel.Vectors

    def __len__(self) -> int:
        return len(self.image_ids)

    @staticmethod
    def empty(dim: int, dtype: np.dtype[Any]) -> Rows:
        none = np.zeros(0, dtype="S16")
        return Rows(none, none.copy(), np.zeros((0, dim), dtype=dtype))

    @staticmethod
    def build(listing_ids: Ids, image_ids: Ids, vectors: kernel.Vectors, dtype: np.dtype[Any]) -> Rows:
        """Sorted; of rows sharing an image id the last wins."""
        n = len(image_ids)
        _, first_reversed = np.unique(image_ids[::-1], return_index=True)
        keep = n - 1 - first_reversed.astype(np.int64)
        order = keep[np.lexsort((image_ids[keep], listing_ids[keep]))]
        return Rows(listing_ids[order], image_ids[order], kernel.narrow(vectors[order], dtype))

    def take(self, mask: npt.NDArray[np.bool_]) -> Rows:
        return Rows(self.listing_ids[mask], self.image_ids[mask], self.vectors[mask])


@dataclass(frozen=True)
class _Encoded:
    """Rows with a code, in IVF id order; never changed once published."""

    codes: Codes
    listing_ids: Ids
    image_ids: Ids
    image_order: npt.NDArray[np.int64]  # argsort of image_ids
    sorted_images: Ids = field(repr=False)

    def __len__(self) -> int:
        return len(self.image_ids)

    @staticmethod
    def of(codes: Codes, listing_ids: Ids, image_ids: Ids) -> _Encoded:
        order = np.argsort(image_ids, kind="stable")
        return _Encoded(codes, listing_ids, image_ids, order, image_ids[order])

    def rows_of_images(self, image_ids: Ids) -> I64:
        """Every row holding one of these image ids (an image replaced later has several)."""
        lo = np.searchsorted(self.sorted_images, image_ids, "left")
        hi = np.searchsorted(self.sorted_images, image_ids, "right")
        counts = hi - lo
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        return self.image_order[starts + np.arange(int(counts.sum()))].astype(np.int64)

    def rows_of_listings(self, listing_ids: Ids) -> I64:
        if len(listing_ids) <= 8:  # one pass each beats sorting every row
            hit = np.zeros(len(self), dtype=bool)
            for key in listing_ids:
                hit |= self.listing_ids == key
            return np.flatnonzero(hit)
        return np.flatnonzero(np.isin(self.listing_ids, listing_ids))

    @property
    def nbytes(self) -> int:
        arrays = (self.listing_ids, self.image_ids, self.image_order, self.sorted_images)
        return self.codes.nbytes + sum(a.nbytes for a in arrays)


@dataclass(frozen=True)
class _View:
    encoded: _Encoded
    alive: npt.NDArray[np.bool_]  # per encoded row
    live_bitmap: npt.NDArray[np.uint8] | None  # packed ``alive``; None when every row is alive
    removed: Ids  # sorted image ids removed and not added back: left out of rescoring
    fresh: Rows

    @staticmethod
    def make(encoded: _Encoded, alive: npt.NDArray[np.bool_], removed: Ids, fresh: Rows) -> _View:
        bitmap = None if alive.all() else np.packbits(alive, bitorder="little")
        return _View(encoded, alive, bitmap, np.unique(removed), fresh)

    @cached_property
    def live_rows(self) -> int:
        return int(self.alive.sum()) + len(self.fresh)

    @cached_property
    def listing_count(self) -> int:
        both = np.concatenate([self.encoded.listing_ids[self.alive], self.fresh.listing_ids])
        return len(np.unique(both))


class CompactIndex:
    """Reduced codes in memory propose listings; their full vectors, read from the store, are
    rescored exactly. Offers what :class:`search.tier.SearchIndex` asks for."""

    def __init__(
        self,
        store: Store,
        model: ModelInfo,
        settings: SearchSettings,
        codes: Codes,
        listing_ids: Ids,
        image_ids: Ids,
    ) -> None:
        """Over ``codes``, whose rows (in IVF id order) hold these listing and image ids."""
        if codes.index.ntotal != len(image_ids) or len(listing_ids) != len(image_ids):
            raise ValueError(
                f"{codes.index.ntotal} codes need as many listing and image ids, "
                f"got {len(listing_ids)} and {len(image_ids)}"
            )
        self.store, self.model, self.settings = store, model, settings
        self.dtype = numpy_dtype(settings.dtype)
        self._lock = threading.Lock()
        encoded = _Encoded.of(codes, listing_ids, image_ids)
        alive = np.ones(len(image_ids), dtype=bool)
        self._view = _View.make(encoded, alive, np.zeros(0, "S16"), Rows.empty(model.dim, self.dtype))
        self.recall_at_10: float | None = None
        self.follower: Any = None

    # -- shape ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._view.live_rows

    @property
    def listing_count(self) -> int:
        return self._view.listing_count

    @property
    def fresh_rows(self) -> int:
        return len(self._view.fresh)

    @property
    def nbytes(self) -> int:
        """Memory the index holds: codes, ids, the live bitmap and the fresh tier."""
        v = self._view
        fresh = v.fresh.vectors.nbytes + v.fresh.listing_ids.nbytes + v.fresh.image_ids.nbytes
        bitmap = 0 if v.live_bitmap is None else v.live_bitmap.nbytes
        return v.encoded.nbytes + v.alive.nbytes + bitmap + v.removed.nbytes + fresh

    # -- changes --------------------------------------------------------------------------
    def add(self, batch: FeatureBatch) -> None:
        """Add or replace vectors (an image id already present is replaced)."""
        scoring.check_batch(batch.vectors, self.model)
        if len(batch) == 0:
            return
        with self._lock:
            v = self._view
            alive = v.alive.copy()
            alive[v.encoded.rows_of_images(batch.image_ids)] = False
            kept = v.fresh.take(~np.isin(v.fresh.image_ids, batch.image_ids))
            fresh = Rows.build(
                np.concatenate([kept.listing_ids, batch.listing_ids]),
                np.concatenate([kept.image_ids, batch.image_ids]),
                np.concatenate([kept.vectors, kernel.narrow(batch.vectors, self.dtype)]),
                self.dtype,
            )
            removed = v.removed[~np.isin(v.removed, batch.image_ids)]
            if len(fresh) > self.settings.compact_fresh_max_rows:
                self._merge(v.encoded, alive, removed, fresh)
            else:
                self._view = _View.make(v.encoded, alive, removed, fresh)

    def remove_images(self, image_ids: Iterable[uuid.UUID]) -> int:
        """Remove images; returns how many were present."""
        ids = id_array(image_ids)
        with self._lock:
            v = self._view
            rows = v.encoded.rows_of_images(ids)
            return self._remove(v, rows[v.alive[rows]], np.isin(v.fresh.image_ids, ids))

    def remove_listing(self, listing_id: uuid.UUID) -> int:
        """Remove every image of a listing; returns how many were present."""
        return self.remove_listings([listing_id])

    def remove_listings(self, listing_ids: Iterable[uuid.UUID]) -> int:
        ids = id_array(listing_ids)
        with self._lock:
            v = self._view
            rows = v.encoded.rows_of_listings(ids)
            return self._remove(v, rows[v.alive[rows]], np.isin(v.fresh.listing_ids, ids))

    def _remove(self, v: _View, rows: I64, fresh_dead: npt.NDArray[np.bool_]) -> int:
        gone = len(rows) + int(fresh_dead.sum())
        if gone:
            alive = v.alive.copy()
            alive[rows] = False
            dead_ids = np.concatenate([v.removed, v.encoded.image_ids[rows], v.fresh.image_ids[fresh_dead]])
            self._view = _View.make(v.encoded, alive, dead_ids, v.fresh.take(~fresh_dead))
        return gone

    def compact(self) -> None:
        """Encode the fresh tier into the codes and drop its full vectors."""
        with self._lock:
            v = self._view
            self._merge(v.encoded, v.alive, v.removed, v.fresh)

    def _merge(self, encoded: _Encoded, alive: npt.NDArray[np.bool_], removed: Ids, fresh: Rows) -> None:
        """The fresh rows appended to a copy of the IVF (searches keep reading the old one)."""
        codes = encoded.codes.clone()
        codes.add(fresh.vectors)
        merged = _Encoded.of(
            codes,
            np.concatenate([encoded.listing_ids, fresh.listing_ids]),
            np.concatenate([encoded.image_ids, fresh.image_ids]),
        )
        live = np.concatenate([alive, np.ones(len(fresh), dtype=bool)])
        self._view = _View.make(merged, live, removed, Rows.empty(self.model.dim, self.dtype))
        log.info("compact index: %d fresh rows encoded (%d rows with codes)", len(fresh), len(merged))

    # -- lookups --------------------------------------------------------------------------
    def image_id_array(self) -> Ids:
        """Every live image id (S16)."""
        v = self._view
        return np.concatenate([v.encoded.image_ids[v.alive], v.fresh.image_ids])

    def listing_vectors(self, listing_id: uuid.UUID) -> F32:
        rows = self._rows(self._view, id_array([listing_id]))
        if len(rows) == 0:
            raise UnknownId(f"listing {listing_id} has no vectors of model {self.model.name}")
        return kernel.widen(rows.vectors)

    def image_vector(self, image_id: uuid.UUID) -> tuple[uuid.UUID, F32]:
        v = self._view
        key = id_array([image_id])
        at = np.flatnonzero(v.fresh.image_ids == key[0])
        if len(at):
            return as_uuid(v.fresh.listing_ids[at[0]]), kernel.widen(v.fresh.vectors[at[:1]])[0]
        rows = v.encoded.rows_of_images(key)
        rows = rows[v.alive[rows]]
        if len(rows):
            listing = v.encoded.listing_ids[rows[:1]]
            held = self._rows(v, listing)
            at = np.flatnonzero(held.image_ids == key[0])
            if len(at):
                return as_uuid(listing[0]), kernel.widen(held.vectors[at[:1]])[0]
        raise UnknownId(f"image {image_id} has no vector of model {self.model.name}")

    def _rows(self, v: _View, listing_ids: Ids) -> Rows:
        """The live rows of these listings with full vectors: the store's, less what the index
        removed or holds fresh, and the fresh tier's."""
        stored = self.store.listings_features([as_uuid(i) for i in listing_ids], self.model)
        keep = ~np.isin(stored.image_ids, v.removed) & ~np.isin(stored.image_ids, v.fresh.image_ids)
        fresh = np.isin(v.fresh.listing_ids, listing_ids)
        listings = np.concatenate([stored.listing_ids[keep], v.fresh.listing_ids[fresh]])
        images = np.concatenate([stored.image_ids[keep], v.fresh.image_ids[fresh]])
        vectors = np.concatenate([kernel.narrow(stored.vectors[keep], self.dtype), v.fresh.vectors[fresh]])
        order = np.lexsort((images, listings))
        return Rows(listings[order], images[order], vectors[order])

    # -- search ---------------------------------------------------------------------------
    def check_queries(self, queries: npt.NDArray[np.floating]) -> F32:
        return scoring.as_queries(queries, self.model.dim)

    def search(
        self,
        query: npt.NDArray[np.floating],
        opts: ScoreOptions,
        exclude: Iterable[uuid.UUID] = (),
        only: set[uuid.UUID] | None = None,
    ) -> list[RankedListing]:
        """Top-k listings for one L2-normalised query vector (see ``search_many``)."""
        q = self.check_queries(query)
        if q.shape[0] != 1:
            raise ValueError(f"search takes one query vector, got {q.shape[0]}: use search_many")
        return self.search_many(q, opts, exclude, only)[0]

    def search_many(
        self,
        queries: npt.NDArray[np.floating],
        opts: ScoreOptions,
        exclude: Iterable[uuid.UUID] = (),
        only: set[uuid.UUID] | None = None,
    ) -> list[list[RankedListing]]:
        """Top-k listings for each row of ``queries`` (see ``search_requests``)."""
        q = self.check_queries(queries)
        excluded = frozenset(exclude)
        return self.search_requests([SearchRequest(row, opts, exclude=excluded) for row in q], only)

    def search_requests(
        self, requests: Sequence[SearchRequest], only: set[uuid.UUID] | None = None
    ) -> list[list[RankedListing]]:
        """Top listings for each request, each with its own options and exclusions: the
        listings of the images the codes propose (one IVF search for the batch) and of the best
        fresh images, rescored exactly; ``only`` restricts the candidates. One store read and
        one kernel read serve the whole batch; each query ranks only its own candidates, so an
        answer does not depend on the batch."""
        if not requests:
            return []
        q = self.check_queries(np.stack([r.vector for r in requests]))
        v = self._view
        allowed_ids = None if only is None else id_array(only)
        wants = [max(self.settings.compact_candidates, 10 * r.opts.k) for r in requests]
        live = self._live(v, allowed_ids)
        nprobe = self.settings.compact_nprobe
        labels = tier.propose_grouped(
            wants, lambda js, want: v.encoded.codes.propose(q[js], want, nprobe, live)
        )
        fresh_scores = kernel.score(v.fresh.vectors, q)
        proposed: list[Ids] = []
        for j, want in enumerate(wants):
            found = v.encoded.listing_ids[labels[j][labels[j] >= 0]]
            best_fresh = np.argsort(-fresh_scores[:, j], kind="stable")[:want]
            proposed.append(np.unique(np.concatenate([found, v.fresh.listing_ids[best_fresh]])))
        rows = self._rows(v, np.unique(np.concatenate([np.zeros(0, "S16"), *proposed])))
        max_mb = self.settings.batch_max_mb
        return tier.rank_proposed(
            rows.vectors, rows.listing_ids, rows.image_ids, q, requests, proposed, allowed_ids, max_mb
        )

    @staticmethod
    def _live(v: _View, only: Ids | None) -> npt.NDArray[np.uint8] | None:
        """The bitmap of rows the codes may propose: live ones, of allowed listings."""
        if only is None:
            return v.live_bitmap
        return np.packbits(v.alive & np.isin(v.encoded.listing_ids, only), bitorder="little")

    # -- recall ---------------------------------------------------------------------------
    def measure_recall(self, queries: F32, exact: list[list[bytes]], k: int = 10) -> float:
        """Share of the exact top-k listings (``exact``, best first, per query) found."""
        answers = self.search_many(queries, ScoreOptions(k=k))
        found = sum(
            len({r.listing_id.bytes for r in a} & set(e[:k])) for a, e in zip(answers, exact, strict=True)
        )
        return found / max(1, sum(len(e[:k]) for e in exact))
