"""What the query service and the follower need from an index, whichever tier serves it:
:class:`search.engine.VectorIndex` (every vector in memory) or
:class:`search.compact.CompactIndex` (reduced codes in memory, full vectors in the store);
and the batch helpers both tiers share (a batch's chunks, candidates and exact rescoring)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from schemas.records import FeatureBatch, ModelInfo
from search import kernel, scoring
from search.scoring import RankedListing, ScoreOptions, SearchRequest

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Ids = npt.NDArray[np.bytes_]


class SearchIndex(Protocol):
    model: ModelInfo
    follower: Any  # a search.follow.Follower keeping the index fresh, if any
    recall_at_10: float | None  # measured at build when answers are approximate

    def __len__(self) -> int: ...

    @property
    def listing_count(self) -> int: ...

    # -- changes (search.follow.apply) ----------------------------------------------------
    def add(self, batch: FeatureBatch) -> None: ...

    def remove_images(self, image_ids: Iterable[uuid.UUID]) -> int: ...

    def remove_listing(self, listing_id: uuid.UUID) -> int: ...

    def remove_listings(self, listing_ids: Iterable[uuid.UUID]) -> int: ...

    def image_id_array(self) -> npt.NDArray[np.bytes_]:
        """Every live image id (S16)."""
        ...

    # -- lookups and search (search.service) ----------------------------------------------
    def listing_vectors(self, listing_id: uuid.UUID) -> F32: ...

    def image_vector(self, image_id: uuid.UUID) -> tuple[uuid.UUID, F32]: ...

    def check_queries(self, queries: npt.NDArray[np.floating]) -> F32: ...

    def search(
        self,
        query: npt.NDArray[np.floating],
        opts: ScoreOptions,
        exclude: Iterable[uuid.UUID] = (),
        only: set[uuid.UUID] | None = None,
    ) -> list[RankedListing]: ...

    def search_many(
        self,
        queries: npt.NDArray[np.floating],
        opts: ScoreOptions,
        exclude: Iterable[uuid.UUID] = (),
        only: set[uuid.UUID] | None = None,
    ) -> list[list[RankedListing]]: ...

    def search_requests(
        self, requests: Sequence[SearchRequest], only: set[uuid.UUID] | None = None
    ) -> list[list[RankedListing]]:
        """A batch scored together (one read of the vectors), each request ranked with its own
        options and exclusions: the answers each gets alone. ``in_stock_only`` is the
        service's (it joins stock)."""
        ...


def query_chunks(rows: int, queries: int, max_mb: int) -> list[slice]:
    """Slices of a batch of ``queries`` whose score matrix (``rows`` x chunk x 4 bytes) fits in
    ``max_mb`` MiB; a chunk holds one query at least."""
    per = max(1, (max_mb << 20) // max(1, 4 * rows))
    return [slice(s, min(s + per, queries)) for s in range(0, queries, per)]


def propose_grouped(wants: Sequence[int], propose: Callable[[list[int], int], I64]) -> list[I64]:
    """Candidates for each query of a batch, ``wants[j]`` of them for query j: one call of
    ``propose(queries, want)`` per distinct count (one call when every query wants as many, the
    usual case), so each query's candidates are those it gets alone (FAISS answers a query of
    a batch as it answers it alone; a shorter list is not always a prefix of a longer one when
    scores tie)."""
    out: list[I64] = [np.zeros(0, np.int64)] * len(wants)
    for want in sorted(set(wants)):
        members = [j for j, w in enumerate(wants) if w == want]
        for j, labels in zip(members, propose(members, want), strict=True):
            out[j] = labels
    return out


def rank_proposed(
    vectors: kernel.Vectors,
    row_listings: Ids,
    image_ids: Ids,
    queries: F32,
    requests: Sequence[SearchRequest],
    proposed: Sequence[Ids],
    only: Ids | None,
    max_mb: int,
) -> list[list[RankedListing]]:
    """Each request ranked among its own ``proposed`` listings, rescored exactly: ``vectors``
    are every row of the union of the proposals (grouped by listing, ``row_listings``), scored
    against the batch in one read (in chunks of at most ``max_mb``); a row's score depends on
    the row and the query only, so each answer is the one its query gets alone."""
    starts = scoring.group_starts(row_listings)
    listing_ids = row_listings[starts]
    base = None if only is None else np.isin(listing_ids, only)
    out: list[list[RankedListing]] = []
    for chunk in query_chunks(len(vectors), len(queries), max_mb):
        scores = kernel.score(vectors, queries[chunk])
        for j in range(chunk.start, chunk.stop):
            r = requests[j]
            allowed = r.allowed(listing_ids, base) & np.isin(listing_ids, proposed[j])
            column = scores[:, j - chunk.start]
            out.append(scoring.ranked(column, starts, listing_ids, image_ids, allowed, r.opts))
    return out
