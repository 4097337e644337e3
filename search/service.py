"""The query service: resolve a query to a vector, rank listings, join live stock, and
write ``query_results`` so the answer can be read back by its query id."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from extract.decode import decode
from extract.model import FeatureModel
from schemas.codec import l2_normalise
from schemas.records import ImageMatch, ListingResult, QueryAnswer, StockLevel
from search.engine import UnknownId
from search.scoring import RankedListing, ScoreOptions
from search.tier import SearchIndex
from store import Store
from store.results import result_rows

log = logging.getLogger(__name__)


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
    def __init__(
        self,
        store: Store,
        index: SearchIndex,
        model_factory: Callable[[], FeatureModel] | None = None,
        max_pixels: int = 40_000_000,
    ) -> None:
        self.store, self.index = store, index
        self._model_factory = model_factory
        self._model: FeatureModel | None = None
        self.max_pixels = max_pixels

    @property
    def model(self) -> FeatureModel:
        """The CNN, loaded on first use and checked against the one that made the index."""
        if self._model is None:
            if self._model_factory is None:
                raise RuntimeError("this service was built without a model: search by id or vector")
            model = self._model_factory()
            if (model.info.name, model.info.weights) != (
                self.index.model.name,
                self.index.model.weights,
            ):
                raise RuntimeError(
                    f"the loaded model {model.info.name} ({model.info.weights}) is not the one that "
                    f"made the stored vectors ({self.index.model.name}, {self.index.model.weights})"
                )
            self._model = model
        return self._model

    def vector_of(self, query: Query) -> tuple[npt.NDArray[np.float32], uuid.UUID | None]:
        """The query vector, and the listing to leave out of the answer (its own)."""
        if query.image is not None:
            return self.model.embed_images([decode(query.image, self.max_pixels)])[0], None
        if query.image_id is not None:
            listing, vector = self.index.image_vector(query.image_id)
            return vector, listing
        if query.listing_id is not None:
            combined = self.index.listing_vectors(query.listing_id).mean(axis=0, keepdims=True)
            return l2_normalise(combined)[0], query.listing_id
        assert query.vector is not None
        return l2_normalise(np.asarray(query.vector, dtype=np.float32).reshape(-1)), None

    def search(self, query: Query, opts: ScoreOptions, in_stock_only: bool = False) -> QueryAnswer:
        vector, own = self.vector_of(query)
        return self.search_vector(vector, opts, in_stock_only, exclude=own)

    def search_vector(
        self,
        vector: npt.NDArray[np.float32],
        opts: ScoreOptions,
        in_stock_only: bool = False,
        exclude: uuid.UUID | None = None,
    ) -> QueryAnswer:
        return self.search_many(np.reshape(vector, (1, -1)), opts, in_stock_only, exclude)[0]

    def search_many(
        self,
        vectors: npt.NDArray[np.float32],
        opts: ScoreOptions,
        in_stock_only: bool = False,
        exclude: uuid.UUID | None = None,
    ) -> list[QueryAnswer]:
        """One answer per row of ``vectors`` (ranked together: one matrix product), each
        written to ``query_results``."""
        excluded = [exclude] if exclude else []
        ranked = self.index.search_many(vectors, opts, excluded)  # checks the vectors' shape
        queries = np.asarray(vectors, dtype=np.float32).reshape(len(ranked), -1)
        return [
            self._answer(*self._with_stock(q, first, opts, in_stock_only, excluded))
            for q, first in zip(queries, ranked, strict=True)
        ]

    def _answer(self, ranked: list[RankedListing], stock: dict[uuid.UUID, StockLevel]) -> QueryAnswer:
        names = self.store.listing_names([r.listing_id for r in ranked])
        results = tuple(
            ListingResult(
                r.listing_id,
                names.get(r.listing_id, ""),
                r.score,
                stock[r.listing_id].inventory if r.listing_id in stock else None,
                tuple(ImageMatch(i, s) for i, s in r.matches),
            )
            for r in ranked
        )
        answer = QueryAnswer(uuid.uuid4(), results)
        self.store.write_query_results(answer.query_id, result_rows(answer))
        return answer

    def _with_stock(
        self,
        vector: npt.NDArray[np.float32],
        ranked: list[RankedListing],
        opts: ScoreOptions,
        in_stock_only: bool,
        exclude: list[uuid.UUID],
    ) -> tuple[list[RankedListing], dict[uuid.UUID, StockLevel]]:
        """Join live stock to a ranking; with ``in_stock_only`` widen the ranking until k
        in-stock listings are found (the same answer as filtering every listing first)."""
        want = opts.k
        while True:
            stock = dict(self.store.get_stock([r.listing_id for r in ranked]))
            if not in_stock_only:
                return ranked, stock
            kept = [r for r in ranked if r.listing_id in stock and stock[r.listing_id].inventory > 0]
            if len(kept) >= opts.k or len(ranked) < want:
                return kept[: opts.k], stock
            want *= 4
            ranked = self.index.search(vector, dataclasses.replace(opts, k=want), exclude)


__all__ = ["Query", "SearchService", "UnknownId"]
