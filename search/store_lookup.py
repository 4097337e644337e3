"""The index of a process that holds no vectors (``LOOKALIKE_SEARCH_ENGINE=spark``): an image's
or a listing's vectors are looked up in the store when a query names them, and searches are
answered elsewhere (the Spark search service). Start-up reads nothing but the model's record."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.records import FeatureBatch, ModelInfo
from search import scoring
from search.engine import UnknownId
from search.scoring import RankedListing, ScoreOptions, SearchRequest
from store import Store

F32 = npt.NDArray[np.float32]


class NoIndexHere(RuntimeError):
    """A search of this process's own index, which it does not hold (engine ``spark``)."""

    def __init__(self) -> None:
        super().__init__(
            "this process holds no index (LOOKALIKE_SEARCH_ENGINE=spark): its searches go to the "
            "Spark search service; this one needs the memory engine"
        )


class StoreLookup:
    """A :class:`search.tier.SearchIndex` without vectors in memory: lookups read the store
    (as the Spark batch job's ``queries.from_images`` does), changes are the store's business
    (nothing to apply here), and searching is refused."""

    follower: Any = None
    recall_at_10: float | None = None

    def __init__(self, store: Store, model: ModelInfo) -> None:
        self.store, self.model = store, model

    def __len__(self) -> int:
        return 0  # none held here

    @property
    def listing_count(self) -> int:
        return 0

    def add(self, batch: FeatureBatch) -> None:
        return None

    def remove_images(self, image_ids: Iterable[uuid.UUID]) -> int:
        return 0

    def remove_listing(self, listing_id: uuid.UUID) -> int:
        return 0

    def remove_listings(self, listing_ids: Iterable[uuid.UUID]) -> int:
        return 0

    def image_id_array(self) -> npt.NDArray[np.bytes_]:
        return np.empty(0, dtype="S16")

    def listing_vectors(self, listing_id: uuid.UUID) -> F32:
        batch = self.store.listing_features(listing_id, self.model)
        if len(batch.image_ids) == 0:
            raise UnknownId(f"listing {listing_id} has no vectors of model {self.model.name}")
        return np.asarray(batch.vectors, dtype=np.float32).reshape(-1, self.model.dim)

    def image_vector(self, image_id: uuid.UUID) -> tuple[uuid.UUID, F32]:
        listing = self.store.image_listing(image_id)
        if listing is not None:
            batch = self.store.listing_features(listing, self.model)
            hit = np.flatnonzero(batch.image_ids == np.bytes_(image_id.bytes))
            if len(hit):
                return listing, np.asarray(batch.vectors[hit[0]], dtype=np.float32).reshape(self.model.dim)
        raise UnknownId(f"image {image_id} has no vector of model {self.model.name}")

    def check_queries(self, queries: npt.NDArray[np.floating]) -> F32:
        return scoring.as_queries(queries, self.model.dim)

    def search(
        self,
        query: npt.NDArray[np.floating],
        opts: ScoreOptions,
        exclude: Iterable[uuid.UUID] = (),
        only: set[uuid.UUID] | None = None,
    ) -> list[RankedListing]:
        raise NoIndexHere()

    def search_many(
        self,
        queries: npt.NDArray[np.floating],
        opts: ScoreOptions,
        exclude: Iterable[uuid.UUID] = (),
        only: set[uuid.UUID] | None = None,
    ) -> list[list[RankedListing]]:
        raise NoIndexHere()

    def search_requests(
        self, requests: Sequence[SearchRequest], only: set[uuid.UUID] | None = None
    ) -> list[list[RankedListing]]:
        raise NoIndexHere()
