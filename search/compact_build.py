"""Building a :class:`search.compact.CompactIndex` from the store in one streamed scan: train
PCA and the IVF on the first rows, encode every batch and drop it, and measure recall@10
against exact answers found during the same scan."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.progress import Progress

from config.settings import SearchSettings
from schemas.codec import l2_normalise, numpy_dtype
from schemas.records import ModelInfo
from search import kernel
from search.compact import CompactIndex, Rows
from search.compact_codes import Codes, nlist_for
from store import Store

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
RECALL_TOP_IMAGES = 256  # exact best images kept per recall query while building


class _ExactTop:
    """The exact best images of a few queries over a stream of rows, for recall at build."""

    def __init__(self, queries: F32) -> None:
        self.queries = queries
        self.scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        self.listings = np.zeros((len(queries), 0), dtype="S16")

    def feed(self, rows: Rows) -> None:
        if len(self.queries) == 0 or len(rows) == 0:
            return
        scores = np.concatenate([self.scores, kernel.score(rows.vectors, self.queries).T], axis=1)
        listings = np.concatenate(
            [self.listings, np.broadcast_to(rows.listing_ids, (len(self.queries), len(rows)))], axis=1
        )
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :RECALL_TOP_IMAGES]
        self.scores = np.take_along_axis(scores, keep, axis=1)
        self.listings = np.take_along_axis(listings, keep, axis=1)

    def top_listings(self, k: int) -> list[list[bytes]]:
        """Under ``max`` a listing ranks by its best image: the first k listings met."""
        return [list(dict.fromkeys(bytes(x).ljust(16, b"\0") for x in row))[:k] for row in self.listings]


def _scan(store: Store, model: ModelInfo, dtype: np.dtype[Any], progress: bool) -> Iterator[Rows]:
    """The store's rows of ``model`` in scan order, vectors in the index's dtype."""
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"encoding {model.name} vectors", total=None)
        for batch in store.scan_features(model):
            yield Rows(batch.listing_ids, batch.image_ids, kernel.narrow(batch.vectors, dtype))
            bar.advance(task, len(batch))


def build_compact(
    store: Store, model: ModelInfo, settings: SearchSettings, *, progress: bool = False
) -> CompactIndex:
    """A compact index over every stored vector of ``model`` from one streamed scan of the
    store: the first ``compact_train_rows`` rows (whole listings; listing ids are random, so
    a random sample of listings) train PCA and the IVF, then every batch is encoded and
    dropped. Recall@10 against exact is measured on queries made from sampled rows (their
    exact best images found during the same scan) and logged."""
    dtype = numpy_dtype(settings.dtype)
    scan = _scan(store, model, dtype, progress)
    sample: list[Rows] = []
    for rows in scan:
        sample.append(rows)
        if sum(len(r) for r in sample) >= settings.compact_train_rows:
            break
    if not sample or not len(sample[0]):
        raise ValueError(
            f"no vectors of model {model.name} in the store: nothing to build a compact index on"
        )
    train = np.concatenate([r.vectors for r in sample])[: settings.compact_train_rows]
    nlist = nlist_for(store.count_features(model), len(train), settings.compact_nlist)
    codes = Codes.train(train, min(settings.compact_dims, model.dim), nlist)
    queries = _sample_queries(train, settings.compact_recall_queries)
    del train
    exact = _ExactTop(queries)
    listing_ids, image_ids = [], []
    for rows in _chain(sample, scan):
        exact.feed(rows)
        codes.add(rows.vectors)
        listing_ids.append(rows.listing_ids)
        image_ids.append(rows.image_ids)
    index = CompactIndex(
        store, model, settings, codes, np.concatenate(listing_ids), np.concatenate(image_ids)
    )
    log.info(
        "compact index: %d vectors of %s, %d dims, %d lists, %.0f bytes an image",
        len(index),
        model.name,
        codes.dims,
        nlist,
        index.nbytes / max(1, len(index)),
    )
    if len(queries):
        index.recall_at_10 = index.measure_recall(queries, exact.top_listings(10))
        log.info("compact index: recall@10 %.3f on %d sampled queries", index.recall_at_10, len(queries))
    return index


def _chain(first: list[Rows], rest: Iterator[Rows]) -> Iterator[Rows]:
    while first:
        yield first.pop(0)  # the sample is let go as it is encoded
    yield from rest


def _sample_queries(vectors: kernel.Vectors, n: int) -> F32:
    """Stored vectors with noise added: queries that look like the catalogue."""
    rng = np.random.default_rng(0)
    picked = kernel.widen(vectors[rng.choice(len(vectors), size=min(n, len(vectors)), replace=False)])
    noisy = picked + rng.normal(scale=0.5 / np.sqrt(vectors.shape[1]), size=picked.shape)
    return l2_normalise(noisy)
