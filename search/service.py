"""The query service: resolve a query to a vector, rank listings, join live stock, and
write ``query_results`` so the answer can be read back by its query id.

Concurrent queries share passes (:mod:`search.coalesce`): whatever waits when a pass starts
is ranked in one call of the index (one read of the vectors), its stock and names read and its
answers written in one store call each; every query keeps its own options and exclusions, so
its answer is the one it gets alone. Uploads waiting for the CNN are decoded in parallel and
embedded in one forward pass, then join the searches. See docs/concurrency.md.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from extract.decode import decode
from extract.model import FeatureModel
from extract.preprocess import stack_uint8
from schemas.codec import l2_normalise
from schemas.records import ImageMatch, ListingResult, QueryAnswer, StockLevel
from search.coalesce import Coalescer, Overloaded, PassObserver
from search.engine import UnknownId
from search.scoring import RankedListing, ScoreOptions, SearchRequest
from search.tier import SearchIndex
from store import Store
from store.results import result_rows

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Query:
    """Exactly one of image bytes, image id, listing id or vector."""

    image: bytes | None = None
    image_id: uuid.UUID | None = None
    listing_id: uuid.UUID | None = None
    vector: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        given = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a query needs exactly one of image, image_id, listing_id, vector; got {given or 'none'}"
            )


class SearchService:
    """``batch_max``: searches ranked in one pass at most; ``decode_threads``: uploads decoded
    at once; ``embed_batch_max``: uploads embedded in one forward pass (0: the model's default
    per device)."""

    def __init__(
        self,
        store: Store,
        index: SearchIndex,
        model_factory: Callable[[], FeatureModel] | None = None,
        max_pixels: int = 40_000_000,
        *,
        batch_max: int = 64,
        decode_threads: int = 2,
        embed_batch_max: int = 0,
    ) -> None:
        self.store, self.index = store, index
        self._model_factory = model_factory
        self._model: FeatureModel | None = None
        self._model_lock = threading.Lock()
        self.max_pixels = max_pixels
        self.searches: Coalescer[SearchRequest, QueryAnswer] = Coalescer("search", self.answer, batch_max)
        self.uploads: Coalescer[bytes, F32] = Coalescer(
            "embed", self.embed, lambda: self._embed_batch(embed_batch_max)
        )
        self._decoders = ThreadPoolExecutor(decode_threads, thread_name_prefix="lookalike-decode")

    @property
    def model(self) -> FeatureModel:
        """The CNN, loaded on first use and checked against the one that made the index."""
        with self._model_lock:
            if self._model is None:
                self._model = self._load_model()
            return self._model

    def _load_model(self) -> FeatureModel:
        if self._model_factory is None:
            raise RuntimeError("this service was built without a model: search by id or vector")
        model = self._model_factory()
        if (model.info.name, model.info.weights) != (self.index.model.name, self.index.model.weights):
            raise RuntimeError(
                f"the loaded model {model.info.name} ({model.info.weights}) is not the one that "
                f"made the stored vectors ({self.index.model.name}, {self.index.model.weights})"
            )
        return model

    def _embed_batch(self, configured: int) -> int:
        """Uploads per forward pass: as configured, else the model's default (16 until loaded)."""
        model = self._model
        return configured or (model.default_batch if model is not None else 16)

    def observe(self, observer: PassObserver) -> None:
        """Tell ``observer`` about every pass (searches and uploads)."""
        self.searches.observers.append(observer)
        self.uploads.observers.append(observer)

    def close(self) -> None:
        """Finish what waits and stop the pass threads."""
        self.uploads.close()
        self.searches.close()
        self._decoders.shutdown()

    # -- queries to vectors ---------------------------------------------------------------
    def vector_of(self, query: Query) -> tuple[F32, uuid.UUID | None]:
        """The query vector, and the listing to leave out of the answer (its own)."""
        if query.image is not None:
            return _outcome(self.embed([query.image])[0]), None
        if query.image_id is not None:
            listing, vector = self.index.image_vector(query.image_id)
            return vector, listing
        if query.listing_id is not None:
            combined = self.index.listing_vectors(query.listing_id).mean(axis=0, keepdims=True)
            return l2_normalise(combined)[0], query.listing_id
        assert query.vector is not None
        return l2_normalise(np.asarray(query.vector, dtype=np.float32).reshape(-1)), None

    def request(self, query: Query, opts: ScoreOptions, in_stock_only: bool = False) -> SearchRequest:
        """A query by id, listing or vector resolved to what a pass ranks (its vector checked)."""
        vector, own = self.vector_of(query)
        return _request(self.index, vector, opts, in_stock_only, own)

    def embed(self, images: list[bytes]) -> list[F32 | BaseException]:
        """Uploads to vectors: decoded and cropped in parallel, embedded in one forward pass. An
        upload that is not a usable image gets its DecodeError; the others go on."""
        model = self.model
        pending = [self._decoders.submit(self._pixels, model, data) for data in images]
        pixels: list[torch.Tensor | Exception] = []
        for p in pending:
            try:
                pixels.append(p.result())
            except Exception as exc:  # each upload's own error (DecodeError); its neighbours go on
                pixels.append(exc)
        good = [t for t in pixels if isinstance(t, torch.Tensor)]
        vectors: list[F32] = list(model.embed(stack_uint8(good, pin=model.cuda))) if good else []
        rows = iter(vectors)
        return [next(rows) if isinstance(t, torch.Tensor) else t for t in pixels]

    def _pixels(self, model: FeatureModel, data: bytes) -> torch.Tensor:
        """An upload decoded and cropped: what the CNN takes (a decode thread's work)."""
        return model.preprocess(decode(data, self.max_pixels))

    # -- searches -------------------------------------------------------------------------
    def submit(
        self, query: Query, opts: ScoreOptions, in_stock_only: bool = False, limit: int | None = None
    ) -> Future[QueryAnswer]:
        """The answer, from the next pass. A query by id, listing or vector is resolved now (an
        unknown id raises UnknownId here) and refused with :class:`Overloaded` when ``limit``
        searches already wait; an upload goes through the CNN's passes first (the caller bounds
        uploads) and its DecodeError comes through the future."""
        if query.image is None:
            return self.searches.submit(self.request(query, opts, in_stock_only), limit)
        answer: Future[QueryAnswer] = Future()
        embedded = self.uploads.submit(query.image)

        def then(done: Future[F32]) -> None:
            if done.cancelled() or not answer.set_running_or_notify_cancel():
                return
            try:
                request = _request(self.index, done.result(), opts, in_stock_only, None)
                _chain(self.searches.submit(request), answer)
            except BaseException as exc:  # the upload's error is its answer's
                answer.set_exception(exc)

        embedded.add_done_callback(then)
        answer.add_done_callback(lambda f: embedded.cancel() if f.cancelled() else None)
        return answer

    def search(self, query: Query, opts: ScoreOptions, in_stock_only: bool = False) -> QueryAnswer:
        return self.submit(query, opts, in_stock_only).result()

    def search_vector(
        self,
        vector: F32,
        opts: ScoreOptions,
        in_stock_only: bool = False,
        exclude: uuid.UUID | None = None,
    ) -> QueryAnswer:
        """One vector as it is given (not normalised), through the shared passes."""
        return self.searches.submit(_request(self.index, vector, opts, in_stock_only, exclude)).result()

    def search_many(
        self,
        vectors: F32,
        opts: ScoreOptions,
        in_stock_only: bool = False,
        exclude: uuid.UUID | None = None,
    ) -> list[QueryAnswer]:
        """One answer per row of ``vectors`` (ranked together: one read of the vectors), each
        written to ``query_results``."""
        queries = self.index.check_queries(vectors)
        return self.answer([_request(self.index, q, opts, in_stock_only, exclude) for q in queries])

    def answer(self, requests: Sequence[SearchRequest]) -> list[QueryAnswer]:
        """A pass: every request ranked in one call of the index, stock and names read and the
        answers written in one store call each."""
        ranked, stock = self._with_stock(requests, self.index.search_requests(requests))
        names = self.store.listing_names(list(dict.fromkeys(r.listing_id for rs in ranked for r in rs)))
        answers = [
            QueryAnswer(
                uuid.uuid4(),
                tuple(
                    ListingResult(
                        r.listing_id,
                        names.get(r.listing_id, ""),
                        r.score,
                        stock[r.listing_id].inventory if r.listing_id in stock else None,
                        tuple(ImageMatch(i, s) for i, s in r.matches),
                    )
                    for r in rs
                ),
            )
            for rs in ranked
        ]
        self.store.write_many_query_results([(a.query_id, result_rows(a)) for a in answers])
        return answers

    def _with_stock(
        self, requests: Sequence[SearchRequest], ranked: list[list[RankedListing]]
    ) -> tuple[list[list[RankedListing]], dict[uuid.UUID, StockLevel]]:
        """Join live stock to the rankings; a request ``in_stock_only`` keeps its in-stock
        listings, its ranking widened (k x 4 each round, the batch's widened requests ranked
        together) until k are found or none are left: the answer of filtering every listing
        first, and of the request alone."""
        final: list[list[RankedListing]] = [[] for _ in requests]
        want = [r.opts.k for r in requests]
        stock: dict[uuid.UUID, StockLevel] = {}
        pending = list(range(len(requests)))
        while pending:
            stock.update(
                self.store.get_stock(list(dict.fromkeys(r.listing_id for j in pending for r in ranked[j])))
            )
            again = []
            for j in pending:
                k = requests[j].opts.k
                kept = [r for r in ranked[j] if r.listing_id in stock and stock[r.listing_id].inventory > 0]
                if not requests[j].in_stock_only:
                    final[j] = ranked[j]
                elif len(kept) >= k or len(ranked[j]) < want[j]:
                    final[j] = kept[:k]
                else:
                    want[j] *= 4
                    again.append(j)
            wider = [
                dataclasses.replace(requests[j], opts=dataclasses.replace(requests[j].opts, k=want[j]))
                for j in again
            ]
            for j, rs in zip(again, self.index.search_requests(wider), strict=True):
                ranked[j] = rs
            pending = again
        return final, stock


def _request(
    index: SearchIndex, vector: F32, opts: ScoreOptions, in_stock_only: bool, exclude: uuid.UUID | None
) -> SearchRequest:
    q = index.check_queries(vector)  # one vector of the index's dimension, else ValueError
    if len(q) != 1:
        raise ValueError(f"a query is one vector, got {len(q)}")
    return SearchRequest(q[0], opts, in_stock_only, frozenset([exclude]) if exclude else frozenset())


def _outcome(value: F32 | BaseException) -> F32:
    if isinstance(value, BaseException):
        raise value
    return value


def _chain(source: Future[QueryAnswer], target: Future[QueryAnswer]) -> None:
    """``target`` (running) gets ``source``'s outcome."""

    def copy(done: Future[QueryAnswer]) -> None:
        if (exc := done.exception()) is not None:
            target.set_exception(exc)
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)


__all__ = ["Overloaded", "Query", "SearchService", "UnknownId"]
