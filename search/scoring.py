"""Scoring shared by the in-memory engine and the Spark job, so both give one answer.

Vectors are grouped by listing (a listing's rows contiguous). A listing's score aggregates
its images' scores; ties rank by listing id (bytes order, which is also UUID-string order).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from schemas.records import ModelInfo, as_uuid

Aggregation = Literal["max", "mean_top_n", "count_above"]
AGGREGATIONS: tuple[str, ...] = ("max", "mean_top_n", "count_above")
MAX_K = 1000  # the most listings a caller may ask for (checked where requests enter)
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ScoreOptions:
    k: int = 10
    aggregation: Aggregation = "max"
    top_n: int = 3  # for mean_top_n
    threshold: float = 0.8  # for count_above
    min_score: float | None = None
    max_matches: int = 5  # matched images reported per listing

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.top_n < 1:
            raise ValueError(f"top_n must be at least 1, got {self.top_n}")


def as_queries(queries: npt.NDArray[np.floating], dim: int) -> F32:
    """Query vectors as a (n, dim) float32 array; one vector may come flat. The one shape check
    where queries enter an index (both tiers)."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q.reshape(1, -1)
    if q.ndim != 2 or q.shape[1] != dim:
        got = q.shape[-1] if q.ndim else 0
        raise ValueError(f"query vector must have {dim} values, got {got}")
    return q


def check_batch(vectors: npt.NDArray[np.floating], model: ModelInfo) -> None:
    """Vectors added to an index (either tier) must be (n, the model's dim)."""
    if vectors.ndim != 2 or vectors.shape[1] != model.dim:
        raise ValueError(f"vectors must be (n, {model.dim}) for model {model.name}, got {vectors.shape}")


def group_starts(listing_ids: npt.NDArray[np.bytes_]) -> I64:
    """Start row of each run of equal listing ids (rows must be grouped by listing)."""
    if len(listing_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(listing_ids[1:] != listing_ids[:-1]) + 1
    return np.concatenate([[0], change]).astype(np.int64)


def aggregate(scores: F32, starts: I64, opts: ScoreOptions) -> F32:
    """One score per listing from its images' scores."""
    if len(starts) == 0:
        return np.zeros(0, dtype=np.float32)
    if opts.aggregation == "max":
        return np.maximum.reduceat(scores, starts).astype(np.float32)
    codes = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(scores))))
    if opts.aggregation == "count_above":
        return np.bincount(codes, weights=scores >= opts.threshold, minlength=len(starts)).astype(np.float32)
    order = np.lexsort((-scores, codes))  # by listing, best image first
    rank = np.arange(len(scores)) - starts[codes[order]]
    keep = order[rank < opts.top_n]
    sums = np.bincount(codes[keep], weights=scores[keep], minlength=len(starts))
    counts = np.bincount(codes[keep], minlength=len(starts))
    return (sums / counts).astype(np.float32)


def rank(
    listing_scores: F32,
    listing_ids: npt.NDArray[np.bytes_],
    allowed: npt.NDArray[np.bool_],
    opts: ScoreOptions,
) -> I64:
    """Indices of the allowed listings, best first (score desc, then listing id), at most k."""
    ok = allowed.copy()
    if opts.min_score is not None:
        ok &= listing_scores >= opts.min_score
    candidates = np.flatnonzero(ok)
    if len(candidates) > opts.k:
        # Keep everything tied with the k-th score so the id tie-break stays exact.
        kth = np.partition(-listing_scores[candidates], opts.k - 1)[opts.k - 1]
        candidates = candidates[-listing_scores[candidates] <= kth]
    order = np.lexsort((listing_ids[candidates], -listing_scores[candidates]))
    return candidates[order][: opts.k].astype(np.int64)


def matches(scores: F32, start: int, stop: int, max_matches: int) -> list[tuple[int, float]]:
    """A listing's images (row index, score), best first, ties by row order."""
    part = scores[start:stop]
    order = np.lexsort((np.arange(len(part)), -part))[:max_matches]
    return [(start + int(i), float(part[i])) for i in order]


@dataclass(frozen=True)
class RankedListing:
    listing_id: uuid.UUID
    score: float
    matches: tuple[tuple[uuid.UUID, float], ...]


@dataclass(frozen=True)
class SearchRequest:
    """One query of a batch, resolved to its vector, with its own options: what the engines
    (in memory, compact, Spark) score together in one pass, each answered as if alone."""

    vector: F32  # (dim,), L2-normalised
    opts: ScoreOptions = ScoreOptions()
    in_stock_only: bool = False
    exclude: frozenset[uuid.UUID] = frozenset()  # listings left out (a query by image or listing: its own)

    def allowed(
        self, listing_ids: npt.NDArray[np.bytes_], base: npt.NDArray[np.bool_] | None = None
    ) -> npt.NDArray[np.bool_]:
        """Which of ``listing_ids`` this request may rank (``base``: allowed for every request)."""
        ok = np.ones(len(listing_ids), dtype=bool) if base is None else base.copy()
        if self.exclude:
            ok &= ~np.isin(listing_ids, np.array(sorted(e.bytes for e in self.exclude), dtype="S16"))
        return ok


def ranked_each(
    scores: F32,
    starts: I64,
    listing_ids: npt.NDArray[np.bytes_],
    image_ids: npt.NDArray[np.bytes_],
    requests: Sequence[SearchRequest],
    base: npt.NDArray[np.bool_] | None = None,
) -> list[list[RankedListing]]:
    """:func:`ranked` for every row of ``scores`` (requests, rows: each request's scores
    contiguous, :func:`search.kernel.score_by_query`), each with its request's own options and
    exclusions: a batch answered as each query would be alone."""
    if scores.ndim != 2 or scores.shape[0] != len(requests):
        raise ValueError(f"scores must be ({len(requests)}, rows), got {scores.shape}")
    maxima = None  # every request's per-listing maximum in one call, when any asks for it
    if len(starts) and any(r.opts.aggregation == "max" for r in requests):
        maxima = np.maximum.reduceat(scores, starts, axis=1)
    return [
        ranked(
            scores[j],
            starts,
            listing_ids,
            image_ids,
            r.allowed(listing_ids, base),
            r.opts,
            maxima[j] if maxima is not None and r.opts.aggregation == "max" else None,
        )
        for j, r in enumerate(requests)
    ]


def ranked(
    scores: F32,
    starts: I64,
    listing_ids: npt.NDArray[np.bytes_],
    image_ids: npt.NDArray[np.bytes_],
    allowed: npt.NDArray[np.bool_],
    opts: ScoreOptions,
    per_listing: F32 | None = None,
) -> list[RankedListing]:
    """Listings aggregated from their images' ``scores`` (rows of one listing contiguous from
    ``starts``), ranked, each with its best matching images: the answer's one definition.
    ``per_listing``: the aggregation already computed (:func:`ranked_each`, for a batch)."""
    column = np.ascontiguousarray(scores)
    if per_listing is None:
        per_listing = aggregate(column, starts, opts)
    ends = np.append(starts[1:], len(column))
    out = []
    for i in rank(per_listing, listing_ids, allowed, opts):
        found = matches(column, int(starts[i]), int(ends[i]), opts.max_matches)
        out.append(
            RankedListing(
                as_uuid(listing_ids[i]),
                float(per_listing[i]),
                tuple((as_uuid(image_ids[r]), s) for r, s in found),
            )
        )
    return out
