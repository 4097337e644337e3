"""What the query service and the follower need from an index, whichever tier serves it:
:class:`search.engine.VectorIndex` (every vector in memory) or
:class:`search.compact.CompactIndex` (reduced codes in memory, full vectors in the store)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from schemas.records import FeatureBatch, ModelInfo
from search.scoring import RankedListing, ScoreOptions

F32 = npt.NDArray[np.float32]


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
