"""The storage interface every stage talks to. One module per backend implements it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from schemas.records import Extracted, FeatureBatch, ImageRecord, ModelInfo, StockLevel
from store.migrations import Migration

QUERY_TTL_SECONDS = 7 * 24 * 3600
TABLES = ("features", "images", "images_by_id", "listings", "stock_level", "query_results", "models")
Matches = tuple[tuple[uuid.UUID, float], ...]


def f32(x: float) -> float:
    """Scores are CQL ``float`` (32-bit): every backend rounds them the same way."""
    return float(np.float32(x))


def matches_json(matches: Matches) -> str:
    """``query_results.matches``: ``[[image_id, score], ...]``, best first."""
    return json.dumps([[str(i), f32(s)] for i, s in matches])


def parse_matches(text: str) -> Matches:
    return tuple((uuid.UUID(i), float(s)) for i, s in json.loads(text))


def check_table(table: str) -> str:
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")
    return table


class StoreError(RuntimeError):
    """The store could not do what was asked (bad URL, missing data)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; retry later (API: 503)."""


@dataclass(frozen=True)
class ResultRow:
    """One row of `query_results`."""

    score: float
    listing_id: uuid.UUID
    listing_name: str
    inventory: int | None
    matches: Matches


class Store(Protocol):
    """What the pipeline needs from storage; SQLite and Cassandra implement it."""

    url: str

    def apply_schema(self, migrations: Sequence[Migration] | None = None) -> list[str]:
        """Create or migrate tables from the numbered CQL files (``schemas/cql`` unless given);
        idempotent. Returns the versions applied now."""
        ...

    def applied_versions(self) -> list[tuple[str, str]]:
        """(version, applied at) of every schema version applied, oldest first."""
        ...

    def put_model(self, info: ModelInfo) -> None: ...

    def get_model(self, name: str) -> ModelInfo | None: ...

    def models(self) -> list[ModelInfo]:
        """Every model the store holds vectors of (the `models` table), by name."""
        ...

    def write_extracted(self, batch: Sequence[Extracted], dtype: str) -> None:
        """Upsert images, listings and features of a batch; idempotent."""
        ...

    def delete_images(self, listing_id: uuid.UUID, image_ids: Sequence[uuid.UUID]) -> None:
        """Remove these images of one listing (their records and vectors of every model);
        idempotent, unknown ids are ignored."""
        ...

    def delete_listing(self, listing_id: uuid.UUID) -> None:
        """Remove a listing: its images, vectors, name and stock; idempotent."""
        ...

    def existing_images(self, image_ids: Sequence[uuid.UUID], model: str) -> set[uuid.UUID]:
        """Which of these images already have a vector of this model."""
        ...

    def scan_features(
        self, model: ModelInfo, shard: int = 0, shards: int = 1, batch_size: int = 4096
    ) -> Iterator[FeatureBatch]:
        """Every vector of one model in shard `shard` of `shards` (split by listing),
        each row exactly once; a listing's rows are contiguous and never span shards."""
        ...

    def count_features(self, model: ModelInfo) -> int:
        """How many vectors of one model are stored (what a full scan would yield now), so a
        loader can size its buffer before scanning."""
        ...

    def listing_features(self, listing_id: uuid.UUID, model: ModelInfo) -> FeatureBatch: ...

    def listings_features(self, listing_ids: Sequence[uuid.UUID], model: ModelInfo) -> FeatureBatch:
        """The vectors of one model of many listings (each listing one partition read), rows
        ordered by (listing id, image id) bytes; unknown or repeated ids add nothing."""
        ...

    def image_listing(self, image_id: uuid.UUID) -> uuid.UUID | None: ...

    def image_record(self, image_id: uuid.UUID) -> ImageRecord | None:
        """Where an image's pixels live."""
        ...

    def listing_images(self, listing_id: uuid.UUID) -> list[ImageRecord]:
        """A listing's images (one partition read); order unspecified."""
        ...

    def scan_images(self, batch_size: int = 1000) -> Iterator[list[ImageRecord]]:
        """Every image record, in pages of at most ``batch_size`` (``lookalike reembed``)."""
        ...

    def listing_names(self, listing_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, str]: ...

    def listings_page(self, limit: int, after: uuid.UUID | None = None) -> list[tuple[uuid.UUID, str]]:
        """(listing id, name) of at most ``limit`` listings, the first ones after ``after`` (None:
        from the start) in the backend's catalogue order: listing id bytes on SQLite, the token
        ring on Cassandra (keyset paging; ``after`` need not exist any more). A page shorter than
        ``limit`` is the last."""
        ...

    def listings_images(self, listing_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, list[ImageRecord]]:
        """The images of many listings (one partition read each), each listing's ordered by image
        id bytes; listings without images are absent."""
        ...

    def put_stock(self, levels: Sequence[StockLevel]) -> None: ...

    def get_stock(self, listing_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, StockLevel]: ...

    def all_stock(self) -> list[StockLevel]: ...

    def write_query_results(
        self, query_id: uuid.UUID, rows: Sequence[ResultRow], ttl: int = QUERY_TTL_SECONDS
    ) -> None: ...

    def write_many_query_results(
        self, answers: Sequence[tuple[uuid.UUID, Sequence[ResultRow]]], ttl: int = QUERY_TTL_SECONDS
    ) -> None:
        """The rows of many answers (a pass of the search service) in one call: one transaction
        on SQLite, concurrent writes on Cassandra; each answer as ``write_query_results``."""
        ...

    def read_query_results(self, query_id: uuid.UUID, k: int | None = None) -> list[ResultRow]:
        """Best first, at most k."""
        ...

    def count(self, table: str) -> int: ...

    def close(self) -> None: ...
