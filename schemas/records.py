"""Typed records that cross stage boundaries."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from schemas.answers import Answer


def as_uuid(raw: bytes | np.bytes_) -> uuid.UUID:
    """A UUID from a 16-byte id held in an ``S16`` array (numpy drops trailing NUL bytes)."""
    return uuid.UUID(bytes=bytes(raw).ljust(16, b"\0"))


def id_array(ids: Iterable[uuid.UUID]) -> npt.NDArray[np.bytes_]:
    """UUIDs as the ``S16`` array the engine and the stores hold ids in."""
    return np.array([u.bytes for u in ids], dtype="S16")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ModelInfo:
    """What produced a set of vectors (the `models` table)."""

    name: str
    version: str
    dim: int
    dtype: str
    weights: str  # "pretrained:<file>", "file:<path>" or "random:seed=<n>"


@dataclass(frozen=True)
class ImageRecord:
    """Where one image's pixels live (the `images` table)."""

    listing_id: uuid.UUID
    image_id: uuid.UUID
    uri: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    ingested_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class Extracted:
    """One image turned into a vector: everything the writer stores for it."""

    image: ImageRecord
    listing_name: str
    model: str
    vector: npt.NDArray[np.float32]


@dataclass(frozen=True)
class StockLevel:
    listing_id: uuid.UUID
    inventory: int
    etag: uuid.UUID


@dataclass(frozen=True)
class FeatureBatch:
    """Many vectors of one model: ids as 16-byte UUIDs, vectors as float32 rows."""

    listing_ids: npt.NDArray[np.bytes_]  # dtype S16
    image_ids: npt.NDArray[np.bytes_]  # dtype S16
    vectors: npt.NDArray[np.float32]  # (n, dim)

    def __len__(self) -> int:
        return len(self.image_ids)

    @staticmethod
    def empty(dim: int) -> FeatureBatch:
        none = np.zeros(0, dtype="S16")
        return FeatureBatch(none, none.copy(), np.zeros((0, dim), dtype=np.float32))

    @staticmethod
    def concat(batches: list[FeatureBatch], dim: int) -> FeatureBatch:
        if not batches:
            return FeatureBatch.empty(dim)
        return FeatureBatch(
            np.concatenate([b.listing_ids for b in batches]),
            np.concatenate([b.image_ids for b in batches]),
            np.concatenate([b.vectors for b in batches]),
        )


@dataclass(frozen=True)
class ImageMatch:
    image_id: uuid.UUID
    score: float


@dataclass(frozen=True)
class ListingResult:
    """One ranked listing of a search answer."""

    listing_id: uuid.UUID
    listing_name: str
    score: float
    inventory: int | None
    images: tuple[ImageMatch, ...]


@dataclass(frozen=True)
class QueryAnswer:
    query_id: uuid.UUID
    results: tuple[ListingResult, ...]

    def as_json(self) -> dict[str, object]:
        """The answer's wire format (``schemas.answers.Answer``), as JSON-ready values."""
        return Answer.model_validate(asdict(self)).model_dump(mode="json")
