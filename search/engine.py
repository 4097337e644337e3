"""The in-memory engine: every vector of one model, scored per query, aggregated per listing.

Rows live in two segments: the *main* one (loaded at start, sorted by listing, with the
optional approximate index) and a small *fresh* one for vectors that arrived later; rows
removed or replaced are tombstoned in the main segment. Every change publishes a new
immutable :class:`View` (live rows ordered by listing, then image) that searches read without
locks; past ``fresh_max_rows`` the fresh segment is merged into the main one.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from config.settings import SearchSettings
from schemas.codec import l2_normalise, numpy_dtype
from schemas.records import FeatureBatch, ModelInfo, as_uuid, id_array
from search import ann, flat, kernel, scoring, tier
from search.scoring import RankedListing, ScoreOptions, SearchRequest
from search.segment import Segment, View, make_view

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Ids = npt.NDArray[np.bytes_]


class UnknownId(KeyError):
    """An image or listing id the index does not hold."""

    def __str__(self) -> str:
        return str(self.args[0])


class VectorIndex:
    """Exact search over every live vector; approximate search when built with an ANN."""

    def __init__(self, model: ModelInfo, settings: SearchSettings) -> None:
        self.model = model
        self.settings = settings
        self.dtype = numpy_dtype(self.settings.dtype)
        self._lock = threading.Lock()
        empty = Segment.empty(self.dtype, model.dim)
        self._view = make_view(empty, np.ones(0, bool), empty, None)
        self.recall_at_10: float | None = None  # measured when an ANN is built
        self.follower: Any = None  # a search.follow.Follower keeping this index fresh, if any
        self.first_pass = {"kept": 0, "full_scan": 0}  # exact single queries, by path taken
        self.shared_main = False  # the main segment is a snapshot's mapped file (see adopt)

    # -- shape ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._view.order)

    @property
    def listing_count(self) -> int:
        return len(self._view.listing_ids)

    @property
    def fresh_rows(self) -> int:
        return len(self._view.fresh)

    def main_segment(self) -> Segment:
        """The main segment; its vectors are the storage of its FAISS flat index (``.flat``), or
        a snapshot's read-only map (``.flat`` None, :meth:`adopt`)."""
        return self._view.main

    @property
    def approximate(self) -> bool:
        return self._view.ann is not None

    # -- changes --------------------------------------------------------------------------
    def add(self, batch: FeatureBatch) -> None:
        """Add or replace vectors (an image id already present is replaced)."""
        scoring.check_batch(batch.vectors, self.model)
        if len(batch) == 0:
            return
        with self._lock:
            v = self._view
            alive = v.main_alive & ~np.isin(v.main.image_ids, batch.image_ids)
            fresh_keep = ~np.isin(v.fresh.image_ids, batch.image_ids)
            fresh = Segment.build([v.fresh.take(fresh_keep), batch], self.dtype, self.model.dim)
            if len(fresh) > self.settings.fresh_max_rows and not self.shared_main:
                self._compact(v.main, alive, fresh)
            else:
                self._view = make_view(v.main, alive, fresh, v.ann)

    def remove_images(self, image_ids: Iterable[uuid.UUID]) -> int:
        """Remove images; returns how many were present."""
        return self._remove(id_array(image_ids), "image_ids")

    def remove_listing(self, listing_id: uuid.UUID) -> int:
        """Remove every image of a listing; returns how many were present."""
        return self._remove(id_array([listing_id]), "listing_ids")

    def remove_listings(self, listing_ids: Iterable[uuid.UUID]) -> int:
        return self._remove(id_array(listing_ids), "listing_ids")

    def _remove(self, ids: npt.NDArray[np.bytes_], field: str) -> int:
        with self._lock:
            v = self._view
            dead_main = v.main_alive & np.isin(getattr(v.main, field), ids)
            dead_fresh = np.isin(getattr(v.fresh, field), ids)
            gone = int(dead_main.sum() + dead_fresh.sum())
            if gone:
                self._view = make_view(v.main, v.main_alive & ~dead_main, v.fresh.take(~dead_fresh), v.ann)
            return gone

    def reset(self, parts: list[FeatureBatch | Segment]) -> None:
        """Replace everything with these rows, as one main segment (and its ANN)."""
        with self._lock:
            empty = Segment.empty(self.dtype, self.model.dim)
            loaded = Segment.build(parts, self.dtype, self.model.dim, with_flat=True)
            self._compact(empty, np.ones(0, bool), loaded)

    def adopt(self, main: Segment) -> None:
        """Serve ``main`` as the main segment as it is, without copying its rows: a snapshot's
        read-only memory map (``search/snapshot.py``) that every serving process shares. It
        has no FAISS flat index (the exact first pass is off: every exact query scans), and
        the fresh tier is not merged into it past ``fresh_max_rows`` (that would make a
        private copy in each process): it grows until a restart writes a new snapshot."""
        if main.flat is not None:
            raise ValueError("adopt takes a mapped segment; reset builds one with its flat index")
        with self._lock:
            self.shared_main = True
            self._publish(main)

    def compact(self) -> None:
        """Merge the fresh segment into the main one (rebuilding the ANN, if any)."""
        with self._lock:
            v = self._view
            self._compact(v.main, v.main_alive, v.fresh)

    def _compact(self, main: Segment, alive: npt.NDArray[np.bool_], fresh: Segment) -> None:
        if len(main) == 0 and fresh.flat is not None:
            merged = fresh
        elif len(fresh) == 0 and alive.all() and main.flat is not None:
            merged = main
        else:  # the main segment's vectors live in its FAISS flat index
            live = np.concatenate([alive, np.ones(len(fresh), dtype=bool)])
            merged = Segment.build([main, fresh], self.dtype, self.model.dim, live, with_flat=True)
        self.shared_main = False
        self._publish(merged)

    def _publish(self, merged: Segment) -> None:
        """``merged`` as the main segment, with its ANN when approximate; no fresh rows."""
        index = None
        if self.settings.mode == "approximate" and len(merged):
            index = ann.build(merged.vectors, self.settings)
        empty = Segment.empty(self.dtype, self.model.dim)
        self._view = make_view(merged, np.ones(len(merged), bool), empty, index)
        if index is not None:
            self.recall_at_10 = self.measure_recall(self._sample_queries(32))
            log.info("ann: recall@10 %.3f on %d sampled queries", self.recall_at_10, 32)
        log.info("index: %d rows in the main segment (%s)", len(merged), self.settings.mode)

    def _sample_queries(self, n: int) -> F32:
        """Stored vectors with noise added: queries that look like the catalogue."""
        v = self._view
        rng = np.random.default_rng(0)
        picked = kernel.widen(v.vectors(v.order[rng.choice(len(v.order), size=min(n, len(v.order)))]))
        noisy = picked + rng.normal(scale=0.5 / np.sqrt(self.model.dim), size=picked.shape)
        return l2_normalise(noisy)

    def measure_recall(self, queries: F32, k: int = 10) -> float:
        """Share of the exact top-k listings that approximate search finds (1.0 when exact)."""
        opts = ScoreOptions(k=k)
        exact = self.search_many(queries, opts, exact=True)
        approx = self.search_many(queries, opts)
        found = sum(
            len({r.listing_id for r in e} & {r.listing_id for r in a})
            for e, a in zip(exact, approx, strict=True)
        )
        return found / max(1, sum(len(e) for e in exact))

    # -- lookups --------------------------------------------------------------------------
    def image_id_array(self) -> npt.NDArray[np.bytes_]:
        """Every live image id (S16), in (listing, image) order."""
        return self._view.image_ids

    def listing_vectors(self, listing_id: uuid.UUID) -> F32:
        v = self._view
        i = v.listing_index(listing_id.bytes)
        if i is None:
            raise UnknownId(f"listing {listing_id} has no vectors of model {self.model.name}")
        return kernel.widen(v.vectors(v.order[v.starts[i] : v.ends[i]]))

    def image_vector(self, image_id: uuid.UUID) -> tuple[uuid.UUID, F32]:
        v = self._view
        at = v.image_position(image_id.bytes)
        if at is None:
            raise UnknownId(f"image {image_id} has no vector of model {self.model.name}")
        n = len(v.main)
        listing = v.main.listing_ids[at] if at < n else v.fresh.listing_ids[at - n]
        return as_uuid(listing), kernel.widen(v.vectors(np.array([at], dtype=np.int64)))[0]

    # -- search ---------------------------------------------------------------------------
    def check_queries(self, queries: npt.NDArray[np.floating]) -> F32:
        return scoring.as_queries(queries, self.model.dim)

    def search(
        self,
        query: npt.NDArray[np.floating],
        opts: ScoreOptions,
        exclude: Iterable[uuid.UUID] = (),
        only: set[uuid.UUID] | None = None,
        exact: bool | None = None,
    ) -> list[RankedListing]:
        """Top-k listings for one L2-normalised query vector. ``only`` restricts the
        candidates (e.g. to in-stock listings); ``exclude`` removes some."""
        q = self.check_queries(query)
        if q.shape[0] != 1:
            raise ValueError(f"search takes one query vector, got {q.shape[0]}: use search_many")
        return self.search_many(q, opts, exclude, only, exact)[0]

    def search_many(
        self,
        queries: npt.NDArray[np.floating],
        opts: ScoreOptions,
        exclude: Iterable[uuid.UUID] = (),
        only: set[uuid.UUID] | None = None,
        exact: bool | None = None,
    ) -> list[list[RankedListing]]:
        """Top-k listings for each row of ``queries``; exact unless the index is approximate
        (``exact=True`` forces the exact scan). A batch is one matrix product."""
        q = self.check_queries(queries)
        excluded = frozenset(exclude)
        return self.search_requests([SearchRequest(row, opts, exclude=excluded) for row in q], only, exact)

    def search_requests(
        self,
        requests: Sequence[SearchRequest],
        only: set[uuid.UUID] | None = None,
        exact: bool | None = None,
    ) -> list[list[RankedListing]]:
        """Top listings for each request, each with its own options and exclusions, as it gets
        them alone: exact, one read of the matrix for the whole batch (in chunks of at most
        ``batch_max_mb`` of scores); approximate, the ANN's candidates for the batch in one call,
        rescored together. ``only`` restricts every request's candidates."""
        if not requests:
            return []
        q = self.check_queries(np.stack([r.vector for r in requests]))
        v = self._view
        only_ids = None if only is None else id_array(only)
        if v.ann is not None and exact is not True:
            wants = [max(self.settings.candidates, 10 * r.opts.k) for r in requests]
            labels = tier.propose_grouped(wants, lambda js, want: ann.propose(v.ann, q[js], want))
            return self._rescore(v, q, [rows[rows >= 0] for rows in labels], requests, only_ids)
        if len(requests) == 1 and self._first_pass_applies(v, requests[0].opts):
            answer = self._first_pass(v, q, requests[0], only_ids)
            if answer is not None:
                return [answer]
        base = None if only_ids is None else np.isin(v.listing_ids, only_ids)
        out: list[list[RankedListing]] = []
        for chunk in tier.query_chunks(len(v.order), len(q), self.settings.batch_max_mb):
            scores = v.score_by_query(q[chunk])
            out += scoring.ranked_each(scores, v.starts, v.listing_ids, v.image_ids, requests[chunk], base)
        return out

    def _first_pass_applies(self, v: View, opts: ScoreOptions) -> bool:
        return (
            self.settings.exact_first_pass
            and v.main.flat is not None
            and opts.aggregation in flat.FIRST_PASS_AGGREGATIONS
        )

    def _first_pass(
        self, v: View, q: F32, request: SearchRequest, only: Ids | None
    ) -> list[RankedListing] | None:
        """The exact answer from FAISS's best images, when provably exact (see search.flat);
        None when a full scan is needed. ``q``: the one query, as a (1, dim) batch."""
        assert v.main.flat is not None
        opts = request.opts
        rows, floor = v.main.flat.propose(q[0], max(self.settings.candidates, 10 * opts.k))
        ranked = self._rescore(v, q, [rows], [request], only)[0]
        if len(ranked) == opts.k:
            bar = ranked[-1].score
        elif opts.min_score is not None:
            bar = opts.min_score
        else:
            bar = np.inf  # fewer than k listings among the candidates: others may qualify
        exact = floor == -np.inf or floor + v.main.flat.slack(q[0]) < bar
        self.first_pass["kept" if exact else "full_scan"] += 1
        return ranked if exact else None

    def _rescore(
        self,
        v: View,
        q: F32,
        main_rows: list[I64],
        requests: Sequence[SearchRequest],
        only: Ids | None,
    ) -> list[list[RankedListing]]:
        """Rank, for each request, the listings of its main-segment rows (the live ones) and
        every fresh listing by the exact scores of all their live images; the union of the
        batch's listings is scored in one read."""
        proposed = [
            np.union1d(v.main.listing_ids[rows[v.main_alive[rows]]], v.fresh.listing_ids)
            for rows in main_rows
        ]
        union = np.unique(np.concatenate([np.zeros(0, "S16"), *proposed]))
        li = np.searchsorted(v.listing_ids, union)
        lengths = v.ends[li] - v.starts[li]
        sub_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        positions = np.repeat(v.starts[li] - sub_starts, lengths) + np.arange(int(lengths.sum()))
        return tier.rank_proposed(
            v.vectors(v.order[positions]),
            v.listing_rows[positions],
            v.image_ids[positions],
            q,
            requests,
            proposed,
            only,
            self.settings.batch_max_mb,
        )
