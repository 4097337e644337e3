"""Where a Spark batch's query vectors come from: a .npy file, or images already in the store."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from schemas.records import ModelInfo
from search.engine import UnknownId
from search.vector_io import read_queries
from store import Store


def from_file(path: Path, model: ModelInfo) -> npt.NDArray[np.float32]:
    """One query per row of a .npy array (L2-normalised)."""
    return read_queries(path, model.dim)


def from_images(store: Store, model: ModelInfo, image_ids: Sequence[uuid.UUID]) -> npt.NDArray[np.float32]:
    """The stored vectors of these images, in order (each listing read as one slice)."""
    rows = []
    for image in image_ids:
        listing = store.image_listing(image)
        if listing is None:
            raise UnknownId(f"image {image} is not in the store")
        batch = store.listing_features(listing, model)
        hit = np.flatnonzero(batch.image_ids == np.bytes_(image.bytes))
        if len(hit) == 0:
            raise UnknownId(f"image {image} has no vector of model {model.name}")
        rows.append(batch.vectors[hit[0]])
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), model.dim)
